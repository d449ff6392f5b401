import io
import os
import tarfile

import numpy as np
import pytest

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex
from ltscale.data.reader import IndexedReader
from ltscale.data.shards import build_shards, parse_size
from ltscale.data.sources import iter_samples, open_source
from ltscale.data.verify import verify_dataset


def _build(src_path, out, **kw):
    kw.setdefault("shard_bytes", 20_000)
    return build_shards(open_source("idx", src_path), out, source_kind="idx",
                        source_path=str(src_path), progress=False, **kw)


@pytest.fixture
def shards(tiny_idx, tmp_path):
    return _build(tiny_idx, tmp_path / "ds")


def test_index_offsets_point_at_the_png_members(shards, tiny_idx):
    index = ShardIndex.load(shards.root)
    assert len(index) == 72 and len(index.shards) > 2  # small shard size forces several shards
    src = list(iter_samples(open_source("idx", tiny_idx), "train"))
    reader = IndexedReader(index)
    for row in (0, 17, 59):
        assert reader.read(row) == src[row].data
    assert reader.bytes_read == sum(len(src[r].data) for r in (0, 17, 59))
    np.testing.assert_array_equal(index.label[index.split_ids("train")], np.arange(60) % 3)
    assert index.path[3] == "train-images-idx3-ubyte.gz[3]" and index.ext[0] == "png"


def test_shards_are_valid_webdataset_tars(shards):
    import webdataset as wds

    urls = [str(shards.root / n) for n in shards.shards if n.startswith("test")]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 12
    assert samples[4]["__key__"] == "test-000004" and samples[4]["cls"] == 4 % 3
    with tarfile.open(urls[0]) as tar:
        assert tar.getnames()[:2] == ["test-000000.png", "test-000000.cls"]


def test_build_is_deterministic_and_parallel_equals_serial(tiny_idx, tmp_path):
    a = _build(tiny_idx, tmp_path / "a", workers=1)
    b = _build(tiny_idx, tmp_path / "b", workers=2)
    assert a.shards == b.shards
    for name in a.shards + ["index.npz"]:
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    assert a.content_hash() == b.content_hash() == a.compute_hash()


def test_existing_dataset_is_not_replaced_without_overwrite(shards, tiny_idx):
    before = (shards.root / "index.npz").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        _build(tiny_idx, shards.root)
    assert (shards.root / "index.npz").read_bytes() == before


def test_interrupted_build_leaves_no_output_and_resumes(tiny_idx, tmp_path, monkeypatch):
    reference = _build(tiny_idx, tmp_path / "ref")
    src = open_source("idx", tiny_idx)
    original, calls = src.read, []

    def flaky(ref):
        calls.append(ref.key)
        if len(calls) == 72 + 40:  # after the size probe (72 reads), inside the shard writes
            raise RuntimeError("disk full")
        return original(ref)

    monkeypatch.setattr(src, "read", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        build_shards(src, out, source_kind="idx", source_path=str(tiny_idx), shard_bytes=20_000,
                     progress=False)
    work = tmp_path / ".out.building"
    assert not out.exists() and work.is_dir()
    assert not list(work.glob("*.partial"))  # no half shard looks whole
    done = {p.name: p.stat().st_ino for p in work.glob("*.tar")}
    assert done and len(done) < len(reference.shards)

    monkeypatch.setattr(src, "read", original)
    index = build_shards(src, out, source_kind="idx", source_path=str(tiny_idx),
                         shard_bytes=20_000, progress=False)
    assert {n: (out / n).stat().st_ino for n in done} == done  # finished shards were kept
    for name in reference.shards + ["index.npz"]:
        assert (out / name).read_bytes() == (reference.root / name).read_bytes()
    assert not work.exists() and len(index) == 72


def test_truncated_shard_read_names_sample_and_shard(shards):
    index = ShardIndex.load(shards.root)
    last = int(np.flatnonzero(index.shard == 0).max())
    path = shards.root / index.shards[0]
    path.write_bytes(path.read_bytes()[: int(index.offset[last]) + 3])
    with pytest.raises(DataError, match=rf"sample {index.key[last]} in shard {index.shards[0]}"):
        IndexedReader(index).read(last)


def test_parse_size():
    assert parse_size("1GB") == 1 << 30 and parse_size("64k") == 65536 and parse_size("100") == 100
    with pytest.raises(DataError, match="not understood"):
        parse_size("lots")


# --- verify ------------------------------------------------------------------------------------
def test_verify_passes_on_a_good_dataset(shards):
    report = verify_dataset(shards.root, deep=True, progress=False)
    assert report.ok and report.samples == 72 and report.decoded == 72


def test_verify_names_the_corrupted_shard_and_sample(shards):
    index = ShardIndex.load(shards.root)
    row = 5
    path = shards.root / index.shards[index.shard[row]]
    data = bytearray(path.read_bytes())
    start = int(index.offset[row])
    data[start + 16:start + 48] = b"\x00" * 32  # inside the PNG: breaks its IHDR/CRC
    path.write_bytes(bytes(data))
    shallow = verify_dataset(shards.root, progress=False)
    assert [str(p) for p in shallow.problems] == [f"{index.shards[index.shard[row]]}: SHA-256 "
                                                  "differs from the card (the shard changed "
                                                  "after it was indexed)"]
    deep = verify_dataset(shards.root, deep=True, progress=False)
    assert any(p.key == index.key[row] and "does not decode" in p.what for p in deep.problems)


def test_verify_reports_truncated_shard_entries_by_key(shards):
    index = ShardIndex.load(shards.root)
    rows = np.flatnonzero(index.shard == 1)
    path = shards.root / index.shards[1]
    path.write_bytes(path.read_bytes()[: int(index.offset[rows[2]]) - 600])
    report = verify_dataset(shards.root, progress=False)
    keys = {p.key for p in report.problems if p.key}
    assert set(index.key[rows[2:]]) <= keys and index.key[rows[0]] not in keys
    assert any("truncated" in p.what for p in report.problems if p.key is None)


def test_verify_detects_a_modified_index(shards):
    index = ShardIndex.load(shards.root).load_all()
    index._cols["offset"] = index.offset.copy()
    index._cols["offset"][3] += 512
    index._stored_hash = None
    meta_hash = ShardIndex.load(shards.root).content_hash()
    index.save(shards.root)  # a new hash is stored, but the card still has the old one
    report = verify_dataset(shards.root, progress=False)
    what = " | ".join(str(p) for p in report.problems)
    assert meta_hash in what and index.key[3] in what


# --- WebDataset shards written by others -------------------------------------------------------
def _write_foreign_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_foreign_webdataset_shards_are_indexed_in_place(shards, tmp_path):
    import webdataset as wds

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    samples = list(wds.WebDataset([str(shards.root / n) for n in shards.shards],
                                  shardshuffle=False))
    with wds.TarWriter(str(foreign / "data-train-000.tar")) as sink:
        for s in samples[:50]:
            sink.write({"__key__": "dir/" + s["__key__"], "png": s["png"], "cls": s["cls"]})
    with wds.TarWriter(str(foreign / "data-test-000.tar")) as sink:
        for s in samples[60:]:
            sink.write({"__key__": s["__key__"], "png": s["png"]})  # unlabeled
    index = build_shards(open_source("webdataset", foreign), tmp_path / "wds-index",
                         source_kind="webdataset", source_path=str(foreign), progress=False)
    assert index.splits == ["train", "test"] and len(index) == 62
    assert sorted(os.listdir(tmp_path / "wds-index")) == ["card.json", "index.npz"]
    assert sorted(index.shards) == [str(foreign / "data-test-000.tar"), str(foreign / "data-train-000.tar")]
    reader = IndexedReader(index)
    assert reader.read(7) == samples[7]["png"] and index.key[7] == "dir/" + samples[7]["__key__"]
    assert (index.label[index.split_ids("test")] == -1).all()
    assert verify_dataset(tmp_path / "wds-index", deep=True, progress=False).ok


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png"])
def test_foreign_shards_with_escaping_member_names_are_refused(tmp_path, name):
    _write_foreign_tar(tmp_path / "x.tar", [(name, b"data")])
    with pytest.raises(DataError, match="absolute or '..' path"):
        open_source("webdataset", tmp_path / "x.tar")


def test_foreign_shards_with_links_are_refused(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="is a link"):
        open_source("webdataset", tmp_path / "x.tar")


def test_duplicate_keys_are_refused(tiny_idx, tmp_path, monkeypatch):
    src = open_source("idx", tiny_idx)
    original = src.refs
    monkeypatch.setattr(src, "refs", lambda split: original(split)[:3] + original(split)[:1])
    with pytest.raises(DataError, match="duplicate key 'train-000000'"):
        build_shards(src, tmp_path / "o", source_kind="idx", source_path="x", progress=False)


def test_shard_writers_die_on_sigterm_whatever_the_parents_handler(tiny_idx, tmp_path):
    """The CLI makes SIGTERM raise like Ctrl-C. Forked shard writers inherited that handler, so
    the pool's own SIGTERM at shutdown could raise inside a worker holding the task queue's lock
    and leave its sibling waiting forever (a full test run hung 15 minutes). Writers restore the
    default handler: under a raising parent handler, every writer runs with SIG_DFL and the
    parallel builds finish."""
    import subprocess
    import sys
    import textwrap

    marks = tmp_path / "marks"
    marks.mkdir()
    script = textwrap.dedent(f"""
        import os, signal
        from ltscale.data.shards import build_shards
        from ltscale.data.sources import open_source

        class Terminated(KeyboardInterrupt):
            pass

        def raise_terminated(signum, frame):
            raise Terminated()

        class Recording:
            def __init__(self, source):
                self.source = source

            def __getattr__(self, name):
                return getattr(self.source, name)

            def read(self, ref):
                plain = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                open(os.path.join({str(marks)!r}, f"{{os.getpid()}}-{{plain}}"), "w").close()
                return self.source.read(ref)

        signal.signal(signal.SIGTERM, raise_terminated)
        for i in range(5):
            build_shards(Recording(open_source("idx", {str(tiny_idx)!r})),
                         {str(tmp_path)!r} + f"/ds{{i}}", source_kind="idx",
                         source_path={str(tiny_idx)!r}, shard_bytes=2000, workers=2,
                         progress=False)
        print("done", os.getpid())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
    parent = proc.stdout.split()[-1]  # it reads a few samples itself to plan the shards
    seen = {name.split("-")[1] for name in os.listdir(marks) if name.split("-")[0] != parent}
    assert seen == {"True"}, sorted(os.listdir(marks))[:5]
