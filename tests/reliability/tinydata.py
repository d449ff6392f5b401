"""Tiny JPEG datasets for the reliability tier, built through ltscale's real shard writer.

``make_dataset`` writes an ImageFolder tree of small random JPEGs (one class-coloured corner so
the classes are learnable), builds shards, index and card with ``build_shards`` (several shards,
so faults can hit one of them) and a manifest over the train split with ``build_manifest``.
``corrupt_key`` names a sample whose JPEG is cut in half before the build: the shards, index
and card are then consistent, and only decoding that sample fails.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ManifestSpec
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source

CLASSES = ("ant", "bee", "cat")


def jpeg_bytes(rng: np.random.Generator, label: int, size: int = 16) -> bytes:
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    pixels[: size // 2, : size // 2] = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])[label]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_dataset(root: Path, per_class: int, *, corrupt_key: str | None = None,
                 shard_bytes: int = 6000, seed: int = 0) -> tuple[Path, Path]:
    """(shards directory, manifest path) of ``per_class`` JPEGs per class under ``root``."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    for label, name in enumerate(CLASSES):
        (images / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = jpeg_bytes(rng, label)
            key = f"{name}_{i:03d}"
            if key == corrupt_key:
                data = data[: len(data) // 2]  # a JPEG cut short: decoding must fail
            (images / name / f"{key}.jpg").write_bytes(data)
    shards = root / "shards"
    build_shards(open_source("imagefolder", images), shards, source_kind="imagefolder",
                 source_path=str(images), shard_bytes=shard_bytes, progress=False)
    index = ShardIndex.load(shards)
    manifest = build_manifest(index, ManifestSpec(split="train", seed=seed))
    path = root / "train.manifest.npz"
    manifest.save(path)
    return shards, path

