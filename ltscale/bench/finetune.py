"""`ltscale bench finetune`: head training from the feature cache vs re-encoding every epoch.

A synthetic IDX dataset (class-dependent blobs on noise) is written to a temporary directory and
sharded; an untrained encoder of the chosen backbone stands in for a pretrained one (the cost of
a forward pass does not depend on the weights). Two ways of training the same linear head for E
epochs with the same number of optimizer steps:

* **cached**: encode the labeled set once into the fp16 feature cache (``stages.finetune``'s
  cache, the real code path), then E epochs of head training reading the cache;
* **re-encode**: every epoch, run the frozen encoder over all images again, then one epoch of head
  training on those features.

Reported: both totals and their ratio, and the steady-state per-epoch ratio (an epoch over the
re-encoded images vs an epoch over the cache), which is what each further epoch, each loss or
each classifier-stage variant costs.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def synthetic_idx(root: Path, images: int, classes: int, size: int, seed: int = 0) -> Path:
    """An MNIST-style dataset whose classes differ by the position of a bright square."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", images), ("t10k", max(classes, images // 5))):
        labels = np.arange(n) % classes
        x = rng.integers(0, 120, size=(n, size, size))
        side = max(2, size // 4)
        grid = max(1, (size - side) // max(1, classes - 1))
        for c in range(classes):
            o = min(size - side, c * grid)
            x[labels == c, o:o + side, o:o + side] += 120
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", np.clip(x, 0, 255))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def bench_finetune(images: int = 2000, classes: int = 10, size: int = 28, epochs: int = 10,
                   batch_size: int = 256, backbone: str = "resnet_tiny", aug_copies: int = 0,
                   workers: int = 0, seed: int = 0) -> dict:
    from ltscale.config.loading import recipe_from_dict
    from ltscale.engine.features import encode
    from ltscale.finetune.cache import module_sha256
    from ltscale.finetune.trainer import predict, train_head
    from ltscale.losses import classification_loss
    from ltscale.models.classifier import new_head
    from ltscale.stages.context import make_context
    from ltscale.stages.finetune import cached_features
    from ltscale.stages.loaders import manifest_eval_loader
    from ltscale.stages.networks import new_encoder

    with tempfile.TemporaryDirectory(prefix="ltscale-bench-ft-") as tmp:
        tmp = Path(tmp)
        synthetic_idx(tmp / "raw", images, classes, size, seed)
        recipe = recipe_from_dict({
            "seed": seed, "output_dir": str(tmp / "out"), "device": "cpu",
            "data": {"source": {"kind": "idx", "path": str(tmp / "raw")},
                     "shards": str(tmp / "shards"), "image_size": size, "channels": 1,
                     "mean": [0.4], "std": [0.25]},
            "manifest": {"imbalance": "none", "noise": "none"},
            "pretrain": {"backbone": {"name": backbone}},
            "finetune": {"epochs": epochs, "batch_size": batch_size, "aug_copies": aug_copies,
                         "workers": workers, "loss": {"name": "ce"}}})
        ctx = make_context(recipe, progress=False)
        encoder = new_encoder(ctx).eval()
        counts = ctx.manifest.class_counts().tolist()
        kw = dict(batch_size=batch_size, lr=recipe.finetune.lr, seed=seed, progress=False)

        # cached: encode once (the stage's cache), then E epochs from the cache
        t0 = time.perf_counter()
        cache, _ = cached_features(ctx, encoder, tmp / "cache", encoder_hash=module_sha256(encoder),
                                   output="encoder", aug_copies=aug_copies, desc="encode")
        encode_once = time.perf_counter() - t0
        head = new_head(encoder.feat_dim, ctx.index.num_classes, "linear", seed=seed)
        head.fit_standardize(cache.features)
        t1 = time.perf_counter()
        head, hist = train_head(head, cache.features, cache.labels,
                                loss_fn=classification_loss("ce", counts), epochs=epochs, **kw)
        head_epochs = time.perf_counter() - t1
        cached_total = time.perf_counter() - t0
        acc_cached = float((predict(head, cache.features).argmax(1).numpy()
                            == cache.labels).mean())

        # re-encode: every epoch, all images through the encoder, then one epoch of the head
        head2 = new_head(encoder.feat_dim, ctx.index.num_classes, "linear", seed=seed)
        head2.fit_standardize(cache.features)
        encode_s, head_s = [], []
        t0 = time.perf_counter()
        for epoch in range(epochs):
            t = time.perf_counter()
            feats, labels = encode(encoder, manifest_eval_loader(ctx, workers=workers),
                                   ctx.device, progress=False)
            encode_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            head2, _ = train_head(head2, feats[None], labels.numpy(),
                                  loss_fn=classification_loss("ce", counts), epochs=1,
                                  **dict(kw, seed=seed + epoch))
            head_s.append(time.perf_counter() - t)
        reencode_total = time.perf_counter() - t0

    n = len(cache)
    per_epoch_cached = head_epochs / epochs
    per_epoch_reencode = reencode_total / epochs
    result = {"images": n, "classes": classes, "size": size, "backbone": backbone,
              "feat_dim": cache.dim, "epochs": epochs, "batch_size": batch_size,
              "aug_copies": aug_copies, "threads": torch.get_num_threads(),
              "cached": {"encode_once_seconds": encode_once, "head_seconds": head_epochs,
                         "total_seconds": cached_total, "train_accuracy": acc_cached},
              "reencode": {"encode_seconds": sum(encode_s), "head_seconds": sum(head_s),
                           "total_seconds": reencode_total},
              "total_speedup": reencode_total / cached_total,
              "per_epoch_seconds": {"cached": per_epoch_cached, "reencode": per_epoch_reencode},
              "per_epoch_speedup": per_epoch_reencode / per_epoch_cached,
              "final_head_loss": hist[-1]["loss"]}
    print(f"fine-tuning head, {n} images {size}x{size}, {backbone} (D={cache.dim}), {epochs} "
          f"epochs, batch {batch_size}, {torch.get_num_threads()} CPU threads")
    print(f"{'':26}{'encode s':>10}{'head s':>10}{'total s':>10}{'s/epoch':>10}")
    print(f"{'cache (encode once)':26}{encode_once:10.2f}{head_epochs:10.2f}{cached_total:10.2f}"
          f"{per_epoch_cached:10.3f}")
    print(f"{'re-encode every epoch':26}{sum(encode_s):10.2f}{sum(head_s):10.2f}"
          f"{reencode_total:10.2f}{per_epoch_reencode:10.3f}")
    print(f"speed-up: {result['total_speedup']:.1f}x for the {epochs}-epoch run (bounded by the "
          f"epoch count), {result['per_epoch_speedup']:.0f}x per further epoch")
    return result
