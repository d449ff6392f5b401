"""Result integrity of datasets (issue #29): byte-identical images (content hashes in the index,
reported by `data build`, `data verify`, `manifest stats`, refused at evaluation), `manifest diff`
across indexes, edited dataset cards, and shard builds (errors name the file, one build per
output folder)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ltscale.cli import main as cli
from ltscale.core.errors import ManifestError
from ltscale.core.lock import build_lock_path
from ltscale.data.index import COLUMNS, IMAGE_HASH, ShardIndex
from ltscale.data.manifest import Manifest
from ltscale.data.reader import IndexedReader
from ltscale.data.verify import verify_dataset
from ltscale.stages.evaluate import check_eval_disjoint
from tests.conftest import write_idx
from tests.reliability.safety import refused, snapshot

pytestmark = pytest.mark.reliability

CONFLICT = ("split train: 1 image(s) occur more than once with different labels (2 samples), "
            "e.g. train-000001 (label 1) = train-000005 (label 2)")
ACROSS = "splits train and test: 1 byte-identical image(s) in both, e.g. train-000003 = test-000000"


def _idx(root: Path, duplicates: bool = True) -> Path:
    """12 train and 6 test 8x8 images over 3 classes (label = i % 3). With ``duplicates``:
    train 5 (label 2) is train 1 (label 1), and test 0 is train 3 (both label 0)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    train, test = rng.integers(0, 255, (12, 8, 8)), rng.integers(0, 255, (6, 8, 8))
    if duplicates:
        train[5], test[0] = train[1], train[3]
    for split, images in (("train", train), ("t10k", test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(len(images)) % 3)
    return root


def _run(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dup(tmp_path, capsys):
    """A dataset with the duplicates of ``_idx``, and the stderr of its build."""
    src = _idx(tmp_path / "raw")
    code, _, err = _run(capsys, ["data", "build", "idx", src, "--out", tmp_path / "ds",
                                 "--workers", "1", "--shard-size", "4000"])
    assert code == 0, err
    return SimpleNamespace(src=src, ds=tmp_path / "ds", build_err=err)


def _manifest(capsys, ds: Path, out: Path) -> Path:
    code, _, err = _run(capsys, ["manifest", "make", ds, "--test", "test", "--out", out])
    assert code == 0, err
    return out


def _strip_image_hashes(ds: Path) -> ShardIndex:
    """Rewrite the dataset as ltscale wrote it before image hashes: no column, no field hashes."""
    index = ShardIndex.load(ds).load_all()
    old = ShardIndex(shards=index.shards, splits=index.splits, classes=index.classes,
                     columns={c: index.column(c) for c in COLUMNS})
    old.save(ds)
    card = json.loads((ds / "card.json").read_text())
    card.pop("field_hashes")
    card["index_hash"] = old.content_hash()
    (ds / "card.json").write_text(json.dumps(card))
    return ShardIndex.load(ds)


# --- content hashes: recorded, reported ------------------------------------------------------
def test_the_index_records_each_images_sha256(dup):
    index = ShardIndex.load(dup.ds)
    reader, hashes = IndexedReader(index), index.image_hashes()
    assert hashes.shape == (18, 16) and hashes.dtype == np.uint8
    for row in range(len(index)):
        assert hashes[row].tobytes() == hashlib.sha256(reader.read(row)).digest()[:16]
    assert (hashes[5] == hashes[1]).all() and not (hashes[2] == hashes[1]).all()


def test_shards_indexed_in_place_get_the_same_hashes(dup, tmp_path):
    from ltscale.data.shards import build_shards
    from ltscale.data.sources import open_source

    index, tars = ShardIndex.load(dup.ds), tmp_path / "tars"
    tars.mkdir()
    for name in index.shards:
        os.link(dup.ds / name, tars / name)
    build_shards(open_source("webdataset", tars), tmp_path / "wds", source_kind="webdataset",
                 source_path=str(tars), progress=False)
    other = ShardIndex.load(tmp_path / "wds")
    by_key = dict(zip(other.key.tolist(), other.image_hashes().tolist()))
    assert len(by_key) == 18
    assert all(by_key[k] == h for k, h in zip(index.key.tolist(), index.image_hashes().tolist()))


def test_the_index_hash_covers_the_image_hashes(dup, capsys):
    path = dup.ds / "index.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[IMAGE_HASH] = arrays[IMAGE_HASH].copy()
    arrays[IMAGE_HASH][4, 0] ^= 0xFF  # meta (and its stored hash) unchanged
    np.savez(path, **arrays)
    index = ShardIndex.load(dup.ds)
    assert index.compute_hash() != index.content_hash()
    code, out, _ = _run(capsys, ["data", "verify", dup.ds])
    assert code == 1 and f"index.npz: index hash {index.compute_hash()} differs" in out, out


def test_an_index_without_image_hashes_loads_and_keeps_its_hash(dup):
    index = _strip_image_hashes(dup.ds)
    assert not index.has_image_hashes and index.image_hashes() is None
    assert index.compute_hash() == index.content_hash()
    # the hash an older ltscale computed: the eight columns, then the metadata
    h = hashlib.sha256()
    for col in COLUMNS:
        h.update(col.encode())
        h.update(np.ascontiguousarray(index.column(col)).tobytes())
    h.update(json.dumps([index.shards, index.splits, index.classes, {}], sort_keys=True).encode())
    assert index.content_hash() == h.hexdigest()[:16]


def test_data_build_reports_duplicates_by_split(dup):
    assert f"ltscale: {dup.ds}: {CONFLICT}" in dup.build_err
    assert f"ltscale: {dup.ds}: {ACROSS}" in dup.build_err


def test_data_build_of_distinct_images_reports_nothing(tmp_path, capsys):
    src = _idx(tmp_path / "raw", duplicates=False)
    code, _, err = _run(capsys, ["data", "build", "idx", src, "--out", tmp_path / "ds",
                                 "--workers", "1"])
    assert code == 0 and "byte-identical" not in err and "different labels" not in err, err


def test_data_verify_reports_duplicates_as_notes(dup, capsys):
    code, out, _ = _run(capsys, ["data", "verify", dup.ds])
    assert code == 0, out
    assert f"note: {CONFLICT}" in out and f"note: {ACROSS}" in out and "ok: 18 samples" in out


def test_data_verify_says_when_content_cannot_be_checked(dup, capsys):
    _strip_image_hashes(dup.ds)
    code, out, _ = _run(capsys, ["data", "verify", dup.ds])
    assert code == 0, out
    assert (f"note: image content not checked: the index at {dup.ds} has no image hashes "
            "(built by an older ltscale)") in out
    assert "note: card.json has no field hashes" in out


def test_manifest_stats_reports_duplicates_by_role(dup, capsys, tmp_path):
    m = _manifest(capsys, dup.ds, tmp_path / "m.npz")
    code, out, err = _run(capsys, ["manifest", "stats", m])
    assert code == 0, err
    assert ("content: role labeled: 1 image(s) occur more than once with different labels "
            "(2 samples), e.g. train-000001 (label 1) = train-000005 (label 2)") in out
    assert ("content: roles labeled and test: 1 byte-identical image(s) in both, "
            "e.g. train-000003 = test-000000") in out
    code, out, _ = _run(capsys, ["manifest", "stats", m, "--json"])
    found = json.loads(out)["content_duplicates"]
    assert found["across_roles"]["labeled/test"]["images"] == 1


def test_manifest_stats_says_when_content_cannot_be_checked(dup, capsys, tmp_path):
    m = _manifest(capsys, dup.ds, tmp_path / "m.npz")
    os.rename(dup.ds, tmp_path / "moved")
    code, out, _ = _run(capsys, ["manifest", "stats", m])
    assert code == 0
    assert (f"content: image content not checked: no readable dataset at {dup.ds}, the folder "
            "the manifest was built from") in out
    os.rename(tmp_path / "moved", dup.ds)
    _strip_image_hashes(dup.ds)  # a new index hash: the manifest no longer matches it
    code, out, _ = _run(capsys, ["manifest", "stats", m])
    assert f"content: image content not checked: the dataset at {dup.ds} now has index" in out
    m2 = _manifest(capsys, dup.ds, tmp_path / "m2.npz")
    code, out, _ = _run(capsys, ["manifest", "stats", m2])
    assert (f"content: image content not checked: the index at {dup.ds} has no image hashes"
            in out)


# --- evaluation refuses test images that are training images by content -----------------------
def _ctx(ds: Path, manifest: Path, allow: bool = False):
    return SimpleNamespace(index=ShardIndex.load(ds), manifest=Manifest.load(manifest),
                           recipe=SimpleNamespace(eval=SimpleNamespace(allow_overlap=allow,
                                                                       split="test")))


def test_evaluation_refuses_test_images_that_are_training_images(dup, capsys, tmp_path):
    m = _manifest(capsys, dup.ds, tmp_path / "m.npz")
    with pytest.raises(ManifestError) as exc:
        check_eval_disjoint(_ctx(dup.ds, m))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("1 evaluation images are byte-identical to training images")
    assert "test-000000 = train-000003" in msg and "eval.allow_overlap: true" in msg
    assert check_eval_disjoint(_ctx(dup.ds, m, allow=True)) == 1


def test_evaluation_says_when_content_cannot_be_checked(dup, capsys, tmp_path, ltscale_log):
    _strip_image_hashes(dup.ds)
    m = _manifest(capsys, dup.ds, tmp_path / "m.npz")
    assert check_eval_disjoint(_ctx(dup.ds, m)) == 0  # rows are disjoint; content unknown
    assert any(line.startswith("test images not checked against the training images by "
                               f"content: the index at {dup.ds} has no image hashes")
               for line in ltscale_log), ltscale_log


# --- manifest diff across indexes ------------------------------------------------------------
def test_manifest_diff_of_two_indexes_compares_no_samples(dup, capsys, tmp_path):
    other = tmp_path / "other"
    code, _, err = _run(capsys, ["data", "build", "idx", _idx(tmp_path / "raw2", False),
                                 "--out", other, "--workers", "1"])
    assert code == 0, err
    a, b = _manifest(capsys, dup.ds, tmp_path / "a.npz"), _manifest(capsys, other,
                                                                    tmp_path / "b.npz")
    ha, hb = Manifest.load(a).header["index_hash"], Manifest.load(b).header["index_hash"]
    code, out, _ = _run(capsys, ["manifest", "diff", a, b])
    assert code == 0
    assert (f"samples not compared: the manifests were built from different indexes ({ha} and "
            f"{hb}), whose row ids name different images") in out
    assert "shared" not in out and "relabeled" not in out and "labeled: 12 -> 12" in out
    code, out, _ = _run(capsys, ["manifest", "diff", a, b, "--json"])
    d = json.loads(out)
    assert d["labeled_shared"] is None and d["roles"]["labeled"]["shared"] is None
    code, out, _ = _run(capsys, ["manifest", "diff", a, a])
    assert "labeled: 12 -> 12 (12 shared, 0 only in a, 0 only in b)" in out


# --- edited dataset cards --------------------------------------------------------------------
@pytest.mark.parametrize("edit, line", [
    (lambda c: c["classes"].__setitem__(1, "cat"),
     'card.json: field classes[1] is "cat" but the index gives "1"'),
    (lambda c: c["splits"]["train"]["class_counts"].__setitem__(2, 40),
     "card.json: field splits.train.class_counts[2] is 40 but the index gives 4"),
    (lambda c: c.__setitem__("name", "imagenet"),
     "card.json: field name changed after the build"),
    (lambda c: c.pop("source"), "card.json: field source was removed after the build"),
])
def test_data_verify_names_the_edited_card_field(dup, capsys, edit, line):
    card_path = dup.ds / "card.json"
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    code, out, _ = _run(capsys, ["data", "verify", dup.ds])
    assert code == 1, out
    problems = [p for p in out.splitlines() if p.startswith("card.json")]
    assert problems[0].startswith(line) and len(problems) == 1, out


# --- shard builds: errors name the file, one build per output folder ---------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() and fsync() give it


@pytest.mark.parametrize("target, name", [
    ("ltscale.data.tarfmt._HashingFile.write", "train-000000.tar.partial"),
    ("ltscale.data.index.np.savez", "index.npz"),
    ("ltscale.core.atomic.os.fsync", "build-plan.json"),
])
def test_out_of_space_during_a_build_names_the_file(tmp_path, capsys, monkeypatch, target, name):
    src = _idx(tmp_path / "raw", duplicates=False)
    monkeypatch.setattr(target, _no_space)
    refused(capsys, ["data", "build", "idx", src, "--out", tmp_path / "ds", "--workers", "1"],
            f"{tmp_path / '.ds.building' / name}: no space left on the device")


def test_out_of_space_writing_the_card_names_it(tmp_path, capsys, monkeypatch):
    import ltscale.data.shards as shards

    write = shards.write_json_atomic

    def full_for_the_card(path, obj):
        if Path(path).name == "card.json":
            _no_space()
        write(path, obj)

    monkeypatch.setattr(shards, "write_json_atomic", full_for_the_card)
    refused(capsys, ["data", "build", "idx", _idx(tmp_path / "raw", False), "--out",
                     tmp_path / "ds", "--workers", "1"],
            f"{tmp_path / '.ds.building' / 'card.json'}: no space left on the device")


FIRST_BUILD = """
import sys, time
from pathlib import Path
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source

src, out, ready, go = sys.argv[1:]
source = open_source("idx", src)
read = source.read

def slow_read(ref):  # the first shard write waits until the test lets it go on
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.02)
    return read(ref)

source.read = slow_read
build_shards(source, out, source_kind="idx", source_path=src, shard_bytes=4000, progress=False)
"""


def test_a_second_build_into_one_folder_is_refused_naming_the_first(tmp_path, capsys):
    src, out = _idx(tmp_path / "raw", duplicates=False), tmp_path / "ds"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", FIRST_BUILD, src, out, ready, go],
                             cwd=Path(__file__).resolve().parents[2])
    try:
        for _ in range(600):
            if ready.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the first build did not start writing"
        work = snapshot(tmp_path / ".ds.building")
        refused(capsys, ["data", "build", "idx", src, "--out", out, "--workers", "1"],
                f"--out {out} is being written by another ltscale build "
                f"(pid {first.pid} on {socket.gethostname()})")
        assert snapshot(tmp_path / ".ds.building") == work and not out.exists()
        go.touch()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert verify_dataset(out, progress=False).ok
    assert not build_lock_path(out).exists()  # removed when the build ended


def test_a_symlinked_build_lock_is_refused(tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep")
    build_lock_path(tmp_path / "ds").symlink_to(mine)
    refused(capsys, ["data", "build", "idx", _idx(tmp_path / "raw", False), "--out",
                     tmp_path / "ds", "--workers", "1"],
            f"{build_lock_path(tmp_path / 'ds')} is a symbolic link")
    assert mine.read_text() == "keep" and not (tmp_path / "ds").exists()
