"""Checkpoints written atomically and read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from ltscale.atomic import atomic_path
from ltscale.errors import CheckpointError


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same here
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); "
                              "it may be truncated or not an ltscale checkpoint") from None
