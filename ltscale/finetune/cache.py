"""Feature cache: encode samples once with the frozen encoder; head training reads the cache.

Features are stored as fp16 ``.npy`` (memory-mapped on load) with their labels beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ltscale.atomic import atomic_path
from ltscale.engine.features import encode


def build_cache(encoder, loader, device, path: Path, desc: str, progress: bool = True) -> Path:
    feats, labels = encode(encoder, loader, device, desc=desc, progress=progress)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "labels.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, labels.numpy().astype(np.int64))
    with atomic_path(path / "features.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats.numpy().astype(np.float16))
    return path


def load_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    feats = np.load(path / "features.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy")
    return torch.from_numpy(np.asarray(feats, dtype=np.float32)), torch.from_numpy(labels)
