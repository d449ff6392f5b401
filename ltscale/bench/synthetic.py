"""Synthetic inputs for benchmarks: a large in-memory index, a folder of real-size JPEGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.data.index import ShardIndex


def synthetic_index(samples: int, classes: int, seed: int = 0,
                    labels: np.ndarray | None = None) -> ShardIndex:
    """An index of ``samples`` rows over ``classes`` balanced classes (no shard files), or with
    the given ``labels`` (one per row)."""
    rng = np.random.default_rng(seed)
    label = np.sort(rng.permutation(samples) % classes) if labels is None else np.asarray(labels)
    keys = np.char.add("s", np.arange(samples).astype("U8"))
    return ShardIndex(
        shards=[f"train-{i:06d}.tar" for i in range(max(1, samples // 10_000))],
        splits=["train"], classes=[f"class{c:05d}" for c in range(classes)],
        columns={"key": keys, "split": np.zeros(samples, np.int8),
                 "shard": (np.arange(samples) // 10_000).astype(np.int32),
                 "offset": np.arange(samples, dtype=np.int64) * 110_000 % (1 << 30) + 512,
                 "size": np.full(samples, 110_000), "ext": np.full(samples, "jpg"),
                 "label": label, "path": np.char.add("train/", keys)})


def write_jpeg_folder(root: Path, images: int, classes: int, size: int = 256,
                      quality: int = 90, seed: int = 0, height: int | None = None,
                      labels: np.ndarray | None = None) -> int:
    """An ImageFolder tree of real JPEGs (smooth gradients plus noise, about the size of a
    resized photo; ``size`` wide, ``height`` high, square by default); image i is in class
    ``labels[i]`` (default: i mod ``classes``). Returns the total bytes written."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height or size, 0:size].astype(np.float32) / size
    total = 0
    digits = max(3, len(str(classes - 1)))
    for i in range(images):
        c = i % classes if labels is None else int(labels[i])
        base = np.stack([xx * rng.uniform(50, 255), yy * rng.uniform(50, 255),
                         (xx + yy) * rng.uniform(20, 120)], -1)
        px = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="JPEG", quality=quality)
        folder = root / f"class{c:0{digits}d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:06d}.jpg").write_bytes(buf.getvalue())
        total += buf.tell()
    return total
