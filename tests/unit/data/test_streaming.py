"""The streaming path: webdataset pipeline over the shards, filtered by the manifest."""

import numpy as np
import pytest
import torch

from ltscale.core.errors import DataError
from ltscale.data.augment import eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.loading import LoaderSettings, build_loader
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec
from ltscale.data.sampling import EpochSampler
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source

pytest.importorskip("webdataset", reason="the streaming path needs the webdataset library")


@pytest.fixture
def shards(tiny_idx, tmp_path):
    # small shards so that ranks and workers each get some
    return build_shards(open_source("idx", tiny_idx), tmp_path / "ds", source_kind="idx",
                        source_path=str(tiny_idx), shard_bytes=4096, progress=False)


def _stream(index, ds, *, batch_size=4, world=1, rank=0, workers=0, tail="drop", urls=None,
            on_error="fail"):
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=3, rank=rank, world_size=world,
                           tail=tail)
    settings = LoaderSettings(backend="stream", workers=workers, urls=urls, shuffle_buffer=16,
                              on_error=on_error)
    return build_loader(ds, sampler, settings, device=torch.device("cpu"), mean=[0.5],
                        std=[0.25])


def test_stream_reads_only_manifest_samples_with_manifest_labels(shards):
    m = build_manifest(shards, ManifestSpec(imbalance=ImbalanceSpec.parse("exp:4"), seed=1))
    ids, observed = m.rows("labeled")
    observed = observed.copy()
    ds = ManifestDataset(shards, ids, (observed + 1) % 3, EvalView(eval_spec(8), 1))
    loader = _stream(shards, ds, batch_size=5, tail="keep")
    seen = []
    for x, y, pos in loader:
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        # the label is the manifest's (here deliberately shifted), not the one in the shard
        np.testing.assert_array_equal(y.numpy(), ds.labels[pos.numpy()])
        seen += pos.tolist()
    assert sorted(seen) == list(range(len(ds)))  # every selected sample once, nothing else


def test_training_stream_gives_every_rank_the_same_batch_count(shards):
    ids = shards.split_ids("train")[:50]
    views = TrainViews(make_preset("cifar", 8, 1), 1)
    counts = []
    for rank in range(2):
        ds = ManifestDataset(shards, ids, shards.label[ids], views)
        loader = _stream(shards, ds, batch_size=4, world=2, rank=rank, workers=1)
        batches = [pos for _, _, pos in loader]
        assert all(len(p) == 4 for p in batches)
        counts.append(len(batches))
        assert {int(p) for b in batches for p in b} <= set(range(50))
    assert counts == [50 // 8] * 2


def test_stream_url_template_and_too_few_shards(shards):
    ids = shards.split_ids("test")
    ds = ManifestDataset(shards, ids, shards.label[ids], EvalView(eval_spec(8), 1))
    template = f"file:{shards.root}/{{shard}}"
    loader = _stream(shards, ds, batch_size=6, tail="keep", urls=template)
    assert sum(len(y) for _, y, _ in loader) == len(ids)
    with pytest.raises(DataError, match=r"must contain \{shard\}"):
        _stream(shards, ds, urls="s3://bucket/ds/")
    with pytest.raises(DataError, match="at least one shard per rank and worker"):
        _stream(shards, ds, world=2, workers=8)


def test_stream_skip_policy_reports_a_corrupt_image(shards):
    ids = shards.split_ids("test")
    victim = int(ids[3])
    path = shards.root / shards.shards[shards.shard[victim]]
    raw = bytearray(path.read_bytes())
    off, size = int(shards.offset[victim]), int(shards.size[victim])
    raw[off:off + size] = b"\0" * size  # same length: the tar stays valid, the PNG does not
    path.write_bytes(bytes(raw))
    ds = ManifestDataset(shards, ids, shards.label[ids], EvalView(eval_spec(8), 1),
                         on_error="skip")
    loader = _stream(shards, ds, batch_size=4, tail="keep", on_error="skip")
    n = sum(len(y) for _, y, _ in loader)
    assert n == len(ids) - 1
    assert [k for k, _ in loader.stats.skipped] == [str(shards.key[victim])]
