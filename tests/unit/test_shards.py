import tarfile

import numpy as np
import pytest

from ltscale.data.index import ShardIndex
from ltscale.data.reader import IndexedReader
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from ltscale.errors import DataError


@pytest.fixture
def shards(tiny_idx, tmp_path):
    return build_shards(open_source("idx", tiny_idx), tmp_path / "ds", source_kind="idx",
                        source_path=str(tiny_idx), shard_bytes=20_000, progress=False)


def test_index_offsets_point_at_the_png_members(shards, tiny_idx):
    index = ShardIndex.load(shards.root)
    assert len(index) == 72 and len(index.shards) > 2  # small shard size forces several shards
    src = list(open_source("idx", tiny_idx).samples("train"))
    reader = IndexedReader(index)
    for row in (0, 17, 59):
        assert reader.read(row) == src[row].data
    assert reader.bytes_read == sum(len(src[r].data) for r in (0, 17, 59))
    np.testing.assert_array_equal(index.label[index.split_ids("train")], np.arange(60) % 3)


def test_shards_are_valid_webdataset_tars(shards):
    import webdataset as wds

    urls = [str(shards.root / n) for n in shards.shards if n.startswith("test")]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 12
    assert samples[4]["__key__"] == "test-000004" and samples[4]["cls"] == 4 % 3
    with tarfile.open(urls[0]) as tar:
        assert tar.getnames()[:2] == ["test-000000.png", "test-000000.cls"]


def test_existing_dataset_is_not_replaced_without_overwrite(shards, tiny_idx):
    before = (shards.root / "index.npz").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        build_shards(open_source("idx", tiny_idx), shards.root, source_kind="idx",
                     source_path="x", progress=False)
    assert (shards.root / "index.npz").read_bytes() == before


def test_failed_build_leaves_no_partial_directory(tiny_idx, tmp_path, monkeypatch):
    src = open_source("idx", tiny_idx)
    original = src.samples

    def broken(split):
        for i, s in enumerate(original(split)):
            if i == 10:
                raise RuntimeError("disk full")
            yield s

    monkeypatch.setattr(src, "samples", broken)
    with pytest.raises(RuntimeError):
        build_shards(src, tmp_path / "out", source_kind="idx", source_path="x", progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny-idx"]


def test_truncated_shard_read_names_sample_and_shard(shards):
    index = ShardIndex.load(shards.root)
    last = int(np.flatnonzero(index.shard == 0).max())
    path = shards.root / index.shards[0]
    path.write_bytes(path.read_bytes()[: int(index.offset[last]) + 3])
    with pytest.raises(DataError, match=rf"sample {index.key[last]}: shard {index.shards[0]}"):
        IndexedReader(index).read(last)
