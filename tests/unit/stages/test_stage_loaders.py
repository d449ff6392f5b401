"""The recipe → loader wiring the stages use: every backend from the same recipe keys."""

import pytest
import torch

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import DataError, RecipeError
from ltscale.stages.context import make_context
from ltscale.stages.loaders import test_loader as balanced_test_loader
from ltscale.stages.loaders import train_loader


def _ctx(tiny_idx, tmp_path, **loader):
    recipe = recipe_from_dict({
        "output_dir": str(tmp_path / "out"), "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(tiny_idx)},
                 "shards": str(tmp_path / "shards"), "image_size": 8, "channels": 1,
                 "mean": [0.5], "std": [0.25], "loader": loader},
        "manifest": {"imbalance": "none", "noise": "none"},
        "pretrain": {"augment": {"preset": "cifar"}}})
    return make_context(recipe, progress=False)


def _positions(loader):
    return [p.tolist() for _, _, p in loader]


def test_torch_and_dali_read_the_same_positions_from_one_recipe(tiny_idx, tmp_path):
    pytest.importorskip("nvidia.dali", reason="DALI wheel not installed (pip install .[dali])")
    seen = {}
    for backend in ("torch", "dali"):
        ctx = _ctx(tiny_idx, tmp_path, backend=backend)
        loader, sampler = train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8,
                                       workers=1, seed=5, epochs=2)
        sampler.set_epoch(1)
        batches = [(x, p) for x, _, p in loader]
        assert all(x.shape == (8, 2, 1, 8, 8) and x.dtype == torch.float32 for x, _ in batches)
        seen[backend] = [p.tolist() for _, p in batches]
    assert seen["torch"] == seen["dali"] and len(seen["torch"]) == 60 // 8


def test_stream_backend_from_a_recipe_covers_the_test_split(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path, backend="stream")
    got = sorted(sum(_positions(balanced_test_loader(ctx, batch_size=5)), []))
    assert got == list(range(12))


def test_a_changed_shard_is_refused_before_the_first_batch(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path, check="checksum")
    shard = ctx.index.root / ctx.index.shards[int(ctx.index.shard[0])]
    raw = bytearray(shard.read_bytes())
    raw[int(ctx.index.offset[0]) + 20] ^= 0xFF  # same size: only the checksum notices
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{shard.name}: SHA-256 differs"):
        train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8, workers=0, seed=0,
                     epochs=1)
    ctx.recipe.data.loader.check = "size"  # a size check lets the same file through
    loader, _ = train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8, workers=0,
                             seed=0, epochs=1)
    assert len(loader) == 60 // 8


def test_recipe_names_unknown_presets_and_mismatched_channels(tiny_idx, tmp_path):
    with pytest.raises(RecipeError, match=r"pretrain.augment.preset: .*unknown preset"):
        recipe_from_dict({"pretrain": {"augment": {"preset": "simclr2"}}})
    with pytest.raises(RecipeError, match=r"data.loader.on_error"):
        recipe_from_dict({"data": {"loader": {"on_error": "ignore"}}})
    ctx = _ctx(tiny_idx, tmp_path)
    # a recipe refuses this (data.mean: 3 value(s) but data.channels is 1); the loader's own
    # check still stands behind it, for sections built without validation
    ctx.recipe.data = ctx.recipe.data.model_copy(update={"mean": [0.5] * 3, "std": [0.2] * 3})
    loader, _ = train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8, workers=0,
                             seed=0, epochs=1)
    with pytest.raises(DataError, match=r"1 channel\(s\) but data.mean/data.std give 3"):
        next(iter(loader))


def test_checksums_are_computed_once_per_shard_until_the_file_changes(tiny_idx, tmp_path,
                                                                       monkeypatch):
    from ltscale.data import verify

    ctx = _ctx(tiny_idx, tmp_path, check="checksum")
    hashed = []
    real = verify.file_sha256
    monkeypatch.setattr(verify, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    for _ in range(3):  # e.g. the train, kNN bank and kNN query loaders of one stage
        train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8, workers=0,
                     seed=0, epochs=1)
    assert len(hashed) == len(set(hashed)) > 0
    shard = ctx.index.root / hashed[0]
    raw = bytearray(shard.read_bytes())
    raw[int(ctx.index.offset[0]) + 20] ^= 0xFF  # same size, new mtime: hashed again, refused
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="SHA-256 differs"):
        train_loader(ctx, augment=ctx.recipe.pretrain.augment, batch_size=8, workers=0, seed=0,
                     epochs=1)


def _knn_ctx(tiny_idx, tmp_path, **knn):
    from tests.conftest import tiny_pipeline_recipe

    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    raw["manifest"]["noise"] = "sym:0.8"  # many observed labels differ from the clean ones
    raw["pretrain"]["knn"] |= {"bank_per_class": 1000} | knn
    return make_context(recipe_from_dict(raw), progress=False)


def test_the_knn_bank_is_the_manifest_with_its_observed_labels(tiny_idx, tmp_path):
    import numpy as np

    from ltscale.stages.loaders import knn_bank, knn_loaders

    ctx = _knn_ctx(tiny_idx, tmp_path)
    assert ctx.recipe.pretrain.knn.bank == "manifest"  # the default
    ids, observed = ctx.manifest.rows("labeled")
    split, rows, labels = knn_bank(ctx)
    assert split == ctx.manifest.header["spec"]["split"]
    # no cap reached: every labeled training image, each with its observed label
    assert sorted(rows.tolist()) == sorted(np.asarray(ids).tolist())
    assert dict(zip(rows.tolist(), labels.tolist())) == dict(zip(np.asarray(ids).tolist(),
                                                                 np.asarray(observed).tolist()))
    assert (labels != ctx.index.label[rows]).any()  # noisy labels, not the clean ones
    bank_loader, _ = knn_loaders(ctx)
    assert bank_loader.dataset.labels.tolist() == labels.tolist()
    # the cap keeps at most bank_per_class per observed class
    capped = _knn_ctx(tiny_idx, tmp_path, bank_per_class=2)
    _, rows2, labels2 = knn_bank(capped)
    assert set(rows2.tolist()) <= set(rows.tolist())
    assert max(np.bincount(labels2)) <= 2


def test_the_clean_train_bank_is_the_old_oracle(tiny_idx, tmp_path):
    from ltscale.stages.loaders import knn_bank

    ctx = _knn_ctx(tiny_idx, tmp_path, bank="clean_train", bank_per_class=3)
    split, rows, labels = knn_bank(ctx)
    assert labels.tolist() == ctx.index.label[rows].tolist()  # clean labels
    assert set(rows.tolist()) <= set(ctx.index.split_ids(split).tolist())
    assert sorted(set(labels.tolist())) == list(range(ctx.index.num_classes))
