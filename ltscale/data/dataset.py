"""A map-style dataset over a manifest that produces whole batches.

``__getitems__(Batch)`` reads the batch's bytes in one coalesced pass (``IndexedReader.read_many``),
decodes and augments each sample with its own seeded generator, and returns the collated batch:
``(images uint8, labels, positions, info)``. ``info`` carries the bytes/reads counters of this
batch and the samples skipped under the ``skip`` error policy, so the loader can sum them over
worker processes. ``encoded_items(Batch)`` is the same pass for ``data.loader.decode: gpu``: it
draws the views' parameters but leaves the JPEGs encoded (``data/encoded.py``).

Error policy (``on_error``): ``fail`` stops at the first unreadable sample with a ``DataError``
naming its key and shard; ``skip`` leaves the sample out of its batch (the batch is shorter),
counts it and reports its key and reason — never silently. A batch whose every sample is bad stops
the run either way.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest
from ltscale.data.reader import IndexedReader
from ltscale.data.sampling import Batch

ON_ERROR = ("fail", "skip")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


class ManifestDataset(torch.utils.data.Dataset):
    def __init__(self, index: ShardIndex, rows: np.ndarray, labels: np.ndarray, views,
                 on_error: str = "fail"):
        if on_error not in ON_ERROR:
            raise DataError(f"unknown on_error policy {on_error!r}; choose one of {ON_ERROR}")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(index)):
            bad = int(rows[(rows < 0) | (rows >= len(index))][0])
            raise DataError(f"manifest row {bad} is not in the shard index at {index.root} "
                            f"({len(index)} samples); the manifest belongs to other shards")
        index.load_all()  # before workers fork: every column once, shared copy-on-write
        self.reader = IndexedReader(index)
        self.rows, self.labels, self.views = rows, np.asarray(labels, dtype=np.int64), views
        self.on_error = on_error

    @classmethod
    def from_manifest(cls, index: ShardIndex, manifest: Manifest, views,
                      roles: tuple[str, ...] = ("labeled",), on_error: str = "fail"):
        ids, observed = manifest.rows(*roles)
        return cls(index, ids, observed, views, on_error)

    @classmethod
    def from_split(cls, index: ShardIndex, split: str, views, rows: np.ndarray | None = None,
                   on_error: str = "fail"):
        rows = index.split_ids(split) if rows is None else rows
        return cls(index, rows, index.label[rows], views, on_error)

    def __len__(self) -> int:
        return len(self.rows)

    def _make(self, pos: int, data, seed, make=None):
        """``make`` (default: the views) of one sample's bytes with its own generator; a decode
        error becomes a ``DataError`` naming the sample and its shard."""
        row = int(self.rows[pos])
        if isinstance(data, Exception):
            raise data
        try:
            return (make or self.views)(data, np.random.default_rng(seed))
        except _DECODE_ERRORS as exc:
            raise DataError(f"{self.reader.where(row)}: cannot decode image ({exc})") from None

    def _each(self, batch: Batch, make=None):
        """(outputs, kept positions, info): ``_make`` of every sample of ``batch``, read in one
        coalesced pass, under the error policy."""
        before = self.reader.counters()
        raw = self.reader.read_many(self.rows[batch.positions])
        outputs, keep, skipped = [], [], []
        for i, (pos, data) in enumerate(zip(batch.positions.tolist(), raw)):
            try:
                outputs.append(self._make(pos, data, int(batch.seeds[i]), make))
                keep.append(i)
            except DataError as exc:
                if self.on_error == "fail":
                    raise
                skipped.append((str(self.reader.index.key[self.rows[pos]]), str(exc)))
        if not outputs:
            raise DataError(f"every sample of a batch of {len(batch)} failed to load; first: "
                            f"{skipped[0][1]}")
        after = self.reader.counters()
        info = {k: after[k] - before[k] for k in after} | {"skipped": skipped}
        return outputs, batch.positions[keep], info

    def __getitems__(self, batch: Batch):
        images, positions, info = self._each(batch)
        x = _stack(images)
        if x.dim() == 5 and x.shape[1] == 1:  # one view: (B, C, H, W)
            x = x[:, 0]
        return (x, torch.from_numpy(self.labels[positions]), torch.from_numpy(positions), info)

    def encoded_items(self, batch: Batch):
        """``__getitems__`` for ``data.loader.decode: gpu``: an ``EncodedBatch`` (each sample's
        JPEG bytes, or its pixels where it is no JPEG, and its views' drawn parameters) in place
        of the images; the training process decodes and augments it (``loading.decode_gpu``)."""
        from ltscale.data.encoded import encode_sample, pack

        items, positions, info = self._each(batch, functools.partial(encode_sample, self.views))
        rows = self.rows[positions]
        batch_out = pack(items, [self.reader.where(int(r)) for r in rows],
                         [str(self.reader.index.key[r]) for r in rows])
        return (batch_out, torch.from_numpy(self.labels[positions]), torch.from_numpy(positions),
                info)

    def __getitem__(self, pos: int):
        """One sample (views, label, position), augmented with seed ``pos`` (for inspection)."""
        x, y, p, _ = self.__getitems__(Batch(np.array([pos]), np.array([pos]), 0))
        return x[0], int(y[0]), int(p[0])


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack into shared memory when in a DataLoader worker, as torch's default collate does: the
    batch then crosses to the main process without another copy."""
    first = images[0]
    if torch.utils.data.get_worker_info() is None or not hasattr(first, "_typed_storage"):
        return torch.stack(images)
    storage = first._typed_storage()._new_shared(first.numel() * len(images), device=first.device)
    out = first.new(storage).resize_(len(images), *first.shape)
    return torch.stack(images, out=out)


def balanced_rows(index: ShardIndex, split: str, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of every class of ``split`` (fewer where a class has fewer), sorted."""
    ids = index.split_ids(split)
    rng = np.random.default_rng([seed, 7])
    out = []
    for c in range(index.num_classes):
        members = ids[index.label[ids] == c]
        out.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(out))
