"""The sample index of a shard set: where each sample's image bytes are, and its original label.

Columns (one row per sample): key, shard (position in ``shards``), offset and size of the image
member's data inside the tar, label, split (position in ``splits``). Stored as ``index.npz``
(no pickles) beside ``card.json``; the content hash ties manifests to the exact index they were
built from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltscale.atomic import atomic_path
from ltscale.errors import DataError

INDEX_FILE = "index.npz"
CARD_FILE = "card.json"
_COLUMNS = ("key", "shard", "offset", "size", "label", "split")


@dataclass
class ShardIndex:
    key: np.ndarray      # str
    shard: np.ndarray    # int32, into shards
    offset: np.ndarray   # int64, byte offset of the image data in the shard
    size: np.ndarray     # int64, byte length of the image data
    label: np.ndarray    # int64, original label
    split: np.ndarray    # int8, into splits
    shards: list[str]    # shard file names, relative to the dataset directory
    splits: list[str]
    classes: list[str]
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.key)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_ids(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"split {split!r} is not in this dataset (it has {self.splits})")
        return np.flatnonzero(self.split == self.splits.index(split))

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for col in _COLUMNS:
            h.update(np.ascontiguousarray(getattr(self, col)).tobytes())
        h.update(json.dumps([self.shards, self.splits, self.classes]).encode())
        return h.hexdigest()[:16]

    def save(self, directory: Path) -> None:
        with atomic_path(Path(directory) / INDEX_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{c: getattr(self, c) for c in _COLUMNS},
                         shards=np.array(self.shards), splits=np.array(self.splits),
                         classes=np.array(self.classes))

    @classmethod
    def load(cls, directory: str | Path) -> "ShardIndex":
        directory = Path(directory)
        path = directory / INDEX_FILE
        if not path.exists():
            raise DataError(f"no shard index at {path}; build the dataset first with "
                            "`ltscale data build KIND PATH --out DIR`")
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {c: z[c] for c in _COLUMNS}
                names = {k: [str(v) for v in z[k]] for k in ("shards", "splits", "classes")}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: unreadable shard index ({exc}); rebuild the dataset") from None
        lengths = {c: len(v) for c, v in cols.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{path}: index columns have different lengths {lengths}; rebuild it")
        return cls(**cols, **names, root=directory)
