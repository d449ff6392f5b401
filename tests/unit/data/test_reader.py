"""IndexedReader: exact bytes, coalesced reads within the overhead bound, truncated shards, fork."""

import multiprocessing
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex
from ltscale.data.reader import IndexedReader
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source


def noise_tree(root, n, side, seed=0):
    """n noise PNGs (incompressible: about side²·3 bytes each) in two classes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / f"c{i % 2}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return root


def build(root, out, shard_bytes=1 << 30):
    build_shards(open_source("imagefolder", root), out, source_kind="imagefolder",
                 source_path=str(root), shard_bytes=shard_bytes, progress=False)
    return ShardIndex.load(out).load_all()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """30 samples of ~30 kB in 3 shards; returns the dataset directory."""
    base = tmp_path_factory.mktemp("reader")
    build(noise_tree(base / "tree", 30, 100), base / "ds", shard_bytes=340_000)
    return base / "ds"


@pytest.fixture
def index(built, tmp_path):
    """A private copy (tests may damage it)."""
    shutil.copytree(built, tmp_path / "ds")
    return ShardIndex.load(tmp_path / "ds").load_all()


def tar_bytes(index):
    """Every image member's bytes as tarfile reads them: row → bytes."""
    out = {}
    for s, name in enumerate(index.shards):
        with tarfile.open(index.root / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for row in np.flatnonzero(index.shard == s).tolist():
            out[row] = members[index.member(row)]
    return out


def gaps(index, rows):
    rows = np.asarray(rows)
    return index.offset[rows[1:]] - (index.offset[rows[:-1]] + index.size[rows[:-1]])


# --- exact bytes --------------------------------------------------------------------------------
def test_read_many_returns_each_members_bytes_in_request_order(index):
    assert len(index) == 30 and len(index.shards) == 3
    want = tar_bytes(index)
    rows = np.array([17, 3, 3, 29, 0, 17, 11, 10, 25, 3, 1])  # unsorted, duplicates, all shards
    reader = IndexedReader(index)
    got = reader.read_many(rows)
    assert len(got) == len(rows)
    for row, data in zip(rows.tolist(), got):
        assert data == want[row], row
    assert reader.samples == len(rows)
    assert reader.read(29) == want[29]


def test_member_bytes_equal_the_source_files(built):
    index = ShardIndex.load(built).load_all()
    reader = IndexedReader(index)
    tree = built.parent / "tree"
    for row, data in enumerate(reader.read_many(np.arange(len(index)))):
        assert data == (tree / index.path[row]).read_bytes()


# --- coalescing ---------------------------------------------------------------------------------
def test_one_shard_in_order_is_one_read_within_the_overhead_bound(index):
    rows = np.flatnonzero(index.shard == 1)
    selected = int(index.size[rows].sum())
    g = gaps(index, rows)
    # precondition of the merge rule: every gap (headers, label member, padding) is below max_gap
    # and below 10 % of the member after it, so the run's gaps stay within 10 % of its data and
    # the whole shard (~330 kB, under max_span) merges into one read
    assert (g > 0).all() and (g <= 8192).all()
    assert (g <= 0.1 * index.size[rows[1:]]).all()
    reader = IndexedReader(index, max_gap=8192, overhead=0.1)
    out = reader.read_many(rows)
    assert reader.reads == 1 < len(rows)
    span = int(index.offset[rows[-1]] + index.size[rows[-1]] - index.offset[rows[0]])
    assert reader.bytes_read == span == selected + int(g.sum())
    assert reader.bytes_read <= 1.1 * selected
    assert reader.samples == len(rows) and all(isinstance(d, bytes) for d in out)


def test_all_rows_take_one_read_per_shard(index):
    reader = IndexedReader(index)
    rows = np.random.default_rng(0).permutation(len(index))
    reader.read_many(rows)
    assert reader.reads == len(index.shards) == 3
    assert reader.bytes_read <= 1.1 * int(index.size.sum())


def test_no_overhead_reads_each_distinct_sample_once_and_exactly(index):
    rows = np.array([4, 2, 2, 3, 0, 1, 4, 12, 11])
    distinct = np.unique(rows)
    reader = IndexedReader(index, overhead=0.0)
    out = reader.read_many(rows)
    assert reader.reads == len(distinct)
    assert reader.bytes_read == int(index.size[distinct].sum())
    assert [len(d) for d in out] == index.size[rows].tolist()
    plan = reader.plan(rows)
    assert [len(m) for _, _, _, m in plan] == [1, 1, 2, 1, 2, 1, 1]  # duplicates share a read


def test_max_gap_zero_disables_merging(index):
    reader = IndexedReader(index, max_gap=0, overhead=10.0)
    reader.read_many(np.arange(10))
    assert reader.reads == 10


def test_sparse_selection_reads_about_the_selected_bytes(index):
    rows = np.arange(0, 30, 10)  # every 10th sample: gaps of ~9 samples exceed max_gap
    reader = IndexedReader(index)
    reader.read_many(rows)
    selected = int(index.size[rows].sum())
    assert reader.bytes_read / selected <= 1.1
    assert reader.reads == len(rows)
    every_other = np.arange(0, 30, 2)  # a gap of one ~30 kB sample is over max_gap too
    r2 = IndexedReader(index)
    r2.read_many(every_other)
    assert r2.reads == len(every_other)
    assert r2.bytes_read == int(index.size[every_other].sum())


def test_overhead_bound_holds_for_members_with_large_gaps(tmp_path):
    """~10 kB members with ~1.5 kB between them: each gap is over 10 % of one member but under
    10 % of two, so only the run's total gap bytes can keep the bound."""
    index = build(noise_tree(tmp_path / "tree", 24, 58), tmp_path / "ds")
    rows = np.arange(len(index))
    g = gaps(index, rows)
    assert (g > 0.1 * index.size[rows[1:]]).all() and (g < 0.1 * 2 * index.size[rows[1:]]).all()
    reader = IndexedReader(index, overhead=0.1)
    out = reader.read_many(rows)
    selected = int(index.size[rows].sum())
    assert reader.bytes_read <= 1.1 * selected
    assert 1 < reader.reads < len(rows)  # still coalesced, into several runs
    assert all(isinstance(d, bytes) for d in out)


@pytest.mark.parametrize("overhead", [0.0, 0.05, 0.1, 0.3])
def test_random_selections_stay_within_the_overhead_bound(index, overhead):
    rng = np.random.default_rng(int(overhead * 100))
    want = tar_bytes(index)
    for _ in range(20):
        rows = rng.choice(len(index), size=int(rng.integers(1, 40)), replace=True)
        reader = IndexedReader(index, overhead=overhead)
        out = reader.read_many(rows)
        assert out == [want[r] for r in rows.tolist()]
        distinct = np.unique(rows)
        assert reader.bytes_read <= (1 + overhead) * int(index.size[distinct].sum())
        assert reader.reads <= len(distinct)
        for shard, start, length, members in reader.plan(rows):
            member_rows = rows[members]
            assert (index.shard[member_rows] == shard).all()
            assert start == index.offset[member_rows].min()
            assert start + length == (index.offset[member_rows] + index.size[member_rows]).max()


def test_max_span_caps_the_length_of_a_merged_read(index):
    rows = np.flatnonzero(index.shard == 0)
    cap = int(3.5 * index.size[rows].max())
    reader = IndexedReader(index, max_span=cap, overhead=0.5)
    plan = reader.plan(rows)
    assert all(length <= cap for _, _, length, _ in plan)
    assert [len(m) for _, _, _, m in plan][:-1] == [3] * (len(plan) - 1)  # 3 members fit a span
    reader.read_many(rows)
    assert reader.reads == len(plan) == -(-len(rows) // 3)


# --- damaged shards -----------------------------------------------------------------------------
def test_truncated_shard_gives_errors_in_place_of_the_lost_rows(index):
    want = tar_bytes(index)
    rows0 = np.flatnonzero(index.shard == 0)
    cut_row = int(rows0[3])
    cut = int(index.offset[cut_row]) + 100
    path = index.root / index.shards[0]
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    lost = {int(r) for r in rows0 if index.offset[r] + index.size[r] > cut}
    assert lost == set(rows0[3:].tolist())
    request = np.random.default_rng(1).permutation(np.concatenate([rows0, [12, 25]]))
    reader = IndexedReader(index)
    out = reader.read_many(request)
    for row, data in zip(request.tolist(), out):
        if row in lost:
            assert isinstance(data, DataError)
            msg = str(data)
            assert index.key[row] in msg and index.shards[0] in msg and "truncated" in msg
        else:
            assert data == want[row]
    assert reader.samples == len(request) - len(lost)
    with pytest.raises(DataError, match=str(index.key[cut_row])):
        reader.read(cut_row)
    assert reader.read(int(rows0[2])) == want[int(rows0[2])]


def test_missing_shard_names_the_file(index):
    os.remove(index.root / index.shards[2])
    reader = IndexedReader(index)
    assert reader.read(0)  # other shards still readable
    with pytest.raises(DataError, match=f"{index.shards[2]} is missing"):
        reader.read_many(np.flatnonzero(index.shard == 2)[:1])


def test_reader_needs_an_index_directory(index):
    memory = ShardIndex(shards=index.shards, splits=index.splits, classes=index.classes,
                        columns={"split": index.split})
    with pytest.raises(DataError, match="no directory"):
        IndexedReader(memory)


# --- fork ---------------------------------------------------------------------------------------
_FORKED: dict = {}


def _child_read(rows):
    reader = _FORKED["reader"]
    out = reader.read_many(np.asarray(rows))
    return out, reader.counters(), os.getpid() == reader._pid


def test_reader_opened_in_the_parent_works_in_a_forked_child(index):
    want = tar_bytes(index)
    reader = IndexedReader(index)
    assert reader.read(5) == want[5]  # the parent has opened shard 0
    assert reader._fds
    _FORKED["reader"] = reader
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            out, counters, owned = pool.apply(_child_read, ([5, 28, 14, 5],))
    finally:
        _FORKED.clear()
    assert out == [want[5], want[28], want[14], want[5]]
    assert owned  # the child took the reader over with its own descriptors
    # the child's counters start from zero: they hold its reads only, not the parent's
    assert counters["samples"] == 4 and counters["reads"] == 3
    assert counters["bytes_read"] == int(index.size[[5, 28, 14]].sum())
    assert reader.read(6) == want[6] and reader.samples == 2  # the parent still reads
