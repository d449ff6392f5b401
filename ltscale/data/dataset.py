"""A map-style dataset over a manifest: position → (image tensor or views, observed label, position)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest
from ltscale.data.reader import IndexedReader
from ltscale.errors import DataError


class ManifestDataset(torch.utils.data.Dataset):
    def __init__(self, index: ShardIndex, rows: np.ndarray, labels: np.ndarray, transform,
                 channels: int = 3):
        self.reader = IndexedReader(index)
        self.rows, self.labels, self.transform = rows, labels, transform
        self.mode = "L" if channels == 1 else "RGB"

    @classmethod
    def from_manifest(cls, index: ShardIndex, manifest: Manifest, transform, channels: int = 3,
                      roles: tuple[str, ...] = ("labeled",)):
        ids, observed = manifest.rows(*roles)
        return cls(index, ids, observed, transform, channels)

    @classmethod
    def from_split(cls, index: ShardIndex, split: str, transform, channels: int = 3,
                   rows: np.ndarray | None = None):
        rows = index.split_ids(split) if rows is None else rows
        return cls(index, rows, index.label[rows], transform, channels)

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, pos: int) -> torch.Tensor:
        row = int(self.rows[pos])
        data = self.reader.read(row)
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.array(img.convert(self.mode))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"sample {self.reader.index.key[row]} in shard "
                            f"{self.reader.index.shards[self.reader.index.shard[row]]}: "
                            f"cannot decode image ({exc})") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def __getitem__(self, pos: int):
        return self.transform(self.decode(pos)), int(self.labels[pos]), pos


def balanced_rows(index: ShardIndex, split: str, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of every class of ``split`` (fewer where a class has fewer), sorted."""
    ids = index.split_ids(split)
    rng = np.random.default_rng([seed, 7])
    out = []
    for c in range(index.num_classes):
        members = ids[index.label[ids] == c]
        out.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(out))


def make_loader(dataset, *, batch_size: int, workers: int, sampler=None, shuffle: bool = False,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None, drop_last=drop_last)
