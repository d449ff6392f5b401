"""The feature cache: reuse by key, rebuild on a changed encoder, augmented copies, rank shares."""

import numpy as np
import pytest
import torch

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import DataError
from ltscale.data.augment import eval_spec
from ltscale.data.augment_torch import EvalView
from ltscale.finetune.cache import encode_share, is_cached, load_cache, module_sha256
from ltscale.stages.context import make_context
from ltscale.stages.finetune import _share_loader, cached_features
from ltscale.stages.networks import new_encoder


def _ctx(tiny_idx, tmp_path, **finetune):
    recipe = recipe_from_dict({
        "output_dir": str(tmp_path / "out"), "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(tiny_idx)},
                 "shards": str(tmp_path / "shards"), "image_size": 8, "channels": 1,
                 "mean": [0.5], "std": [0.25]},
        "manifest": {"imbalance": "none", "noise": "sym:0.3"},
        "pretrain": {"backbone": {"name": "resnet_tiny"}},
        "finetune": {"workers": 0, **finetune}})
    return make_context(recipe, progress=False)


def _cache(ctx, encoder, root, **kw):
    return cached_features(ctx, encoder, root, encoder_hash=module_sha256(encoder),
                           output="encoder", **kw)


def test_cache_is_reused_for_the_same_key_and_rebuilt_for_another_encoder(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path)
    root = tmp_path / "cache"
    enc = new_encoder(ctx, seed=0)
    first, reused = _cache(ctx, enc, root)
    assert not reused and first.features.dtype == np.float16
    assert isinstance(first.features, np.memmap)
    files = sorted(root.glob("*.rank0-of-1.*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again, reused = _cache(ctx, enc, root)
    assert reused and {p: p.stat().st_mtime_ns for p in files} == mtimes
    np.testing.assert_array_equal(again.features, first.features)
    other = new_encoder(ctx, seed=1)
    rebuilt, reused = _cache(ctx, other, root)
    assert not reused
    assert not np.array_equal(rebuilt.features, first.features)
    assert not is_cached(root, first.key)  # the old key's files were replaced
    with torch.no_grad():
        other.eval()
        x = next(iter(_share_loader(ctx, *ctx.manifest.rows("labeled"), EvalView(
            eval_spec(8), 1), workers=0, seed=0)[0]))[0]
        np.testing.assert_allclose(rebuilt.features[0, :len(x)], other(x).numpy(), atol=2e-3)


def test_aug_copies_give_k_plus_1_aligned_versions(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path, aug_copies=2)
    enc = new_encoder(ctx)
    plain, _ = _cache(ctx, enc, tmp_path / "plain")
    aug, reused = _cache(ctx, enc, tmp_path / "aug", aug_copies=2)
    assert not reused and aug.features.shape == (3, 60, enc.feat_dim)
    assert plain.features.shape[0] == 1
    ids, observed = ctx.manifest.rows("labeled")
    np.testing.assert_array_equal(aug.labels, observed)  # observed (noisy) labels, in order
    np.testing.assert_array_equal(aug.positions, np.arange(len(ids)))
    np.testing.assert_array_equal(aug.features[0], plain.features[0])  # version 0: eval view
    for a, b in ((0, 1), (0, 2), (1, 2)):  # each copy its own random views
        assert np.abs(aug.features[a].astype(np.float32) - aug.features[b]).mean() > 1e-3
    # another copy count is another key
    _, reused = _cache(ctx, enc, tmp_path / "aug", aug_copies=1)
    assert not reused


def test_rank_shares_concatenate_in_manifest_order(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path)
    enc = new_encoder(ctx).eval()
    single, _ = _cache(ctx, enc, tmp_path / "single")
    root, key = tmp_path / "sharded", dict(single.key)
    spec = eval_spec(8)
    ids, labels = ctx.manifest.rows("labeled")
    shares = []
    for rank in (1, 0, 2):  # any order: each rank writes only its own share
        ctx.backend.rank, ctx.backend.world_size = rank, 3
        loader, positions = _share_loader(ctx, ids, labels, EvalView(spec, 1), workers=0,
                                          seed=0, batch_size=7)
        shares.append(positions)
        if rank != 2:
            with pytest.raises(DataError, match="incomplete"):
                load_cache(root, key)
        encode_share(enc, [(loader, None)], ctx.device, root, key, positions=positions,
                     rank=rank, world_size=3, progress=False)
    assert sorted(np.concatenate(shares).tolist()) == list(range(60))
    assert not np.array_equal(shares[1], np.arange(20))  # interleaved, not contiguous
    merged = load_cache(root, key)
    np.testing.assert_array_equal(merged.positions, np.arange(60))
    np.testing.assert_array_equal(merged.labels, labels)
    np.testing.assert_allclose(merged.features.astype(np.float32), single.features, atol=2e-3)
    assert (root / "features.npy").exists() and (root / "features.rank2-of-3.npy").exists()
