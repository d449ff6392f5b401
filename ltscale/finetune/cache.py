"""Feature cache: encode a set of samples once with a frozen model; head training reads the cache.

Layout of a cache directory (one per set of samples, e.g. ``finetune/features/train``)::

    features.rank{r}-of-{w}.npy   fp16 (V, n_r, D): V = 1 + aug_copies versions of rank r's rows
    labels.rank{r}-of-{w}.npy     int64 (n_r,)
    positions.rank{r}-of-{w}.npy  int64 (n_r,): positions of those rows in the manifest selection
    key.rank{r}-of-{w}.json       the cache key; written last, so its presence marks a finished
                                  share
    features.npy, labels.npy, positions.npy, key.json
                                  the shares merged in manifest order (only when w > 1)

Version 0 is the deterministic evaluation view; versions 1…k are augmented views (the train
transform of ``finetune.augment``), each with its own per-sample seeds. Each rank encodes the
share the loaders' ``EpochSampler`` gives it (slots r, r + w, …), so the merged cache reorders the
shares by position. Every file is written to a temporary name and renamed.

A cache is reused only when the key of a complete set of shares equals the requested key (the
caller puts the encoder's content hash, the manifest hash, the mode, the number of augmented
copies and the transforms in it); anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ltscale.core.atomic import atomic_path, write_json_atomic
from ltscale.core.errors import DataError
from ltscale.core.progress import bar

FORMAT = 2
_KEY_FILE = re.compile(r"key\.rank(\d+)-of-(\d+)\.json$")


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def module_sha256(module: torch.nn.Module) -> str:
    """Content hash of a module's state (for an encoder that has no file, e.g. a random one)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FeatureCache:
    """A finished cache, memory-mapped: ``features[v, i]`` is version ``v`` of row ``i``; rows are
    in manifest order (``positions`` ascending)."""

    root: Path
    features: np.ndarray   # (V, n, D) float16
    labels: np.ndarray     # (n,) int64
    positions: np.ndarray  # (n,) int64
    key: dict

    @property
    def versions(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def __len__(self) -> int:
        return self.features.shape[1]

    def block(self, version: int = 0) -> torch.Tensor:
        """One version of every row as float32 (a copy in memory)."""
        return torch.from_numpy(np.asarray(self.features[version], dtype=np.float32))


def _names(rank: int, world: int) -> dict[str, str]:
    tag = f"rank{rank}-of-{world}"
    return {"features": f"features.{tag}.npy", "labels": f"labels.{tag}.npy",
            "positions": f"positions.{tag}.npy", "key": f"key.{tag}.json"}


def _complete_world(root: Path, digest: str) -> int | None:
    """The world size of a complete set of shares whose key is ``digest``, if there is one."""
    found: dict[int, set[int]] = {}
    for p in root.glob("key.rank*-of-*.json") if root.is_dir() else ():
        m = _KEY_FILE.search(p.name)
        if not m:
            continue
        try:
            saved = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("digest") == digest:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for world, ranks in sorted(found.items()):
        if ranks == set(range(world)) and all(
                (root / n).exists() for r in ranks for n in _names(r, world).values()):
            return world
    return None


def is_cached(root: Path, key: dict) -> bool:
    return _complete_world(Path(root), key_digest(key)) is not None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


@torch.no_grad()
def encode_share(model: torch.nn.Module, sources: Iterable, device, root: Path, key: dict, *,
                 positions: np.ndarray, rank: int = 0, world_size: int = 1, desc: str = "encode",
                 progress: bool = True) -> None:
    """Encode this rank's share and write its files.

    ``sources``: one ``(loader, epoch)`` per version; the loader yields ``(images, labels,
    positions)`` for the rank's share (``positions``: the share's manifest positions, ascending);
    ``epoch`` (or None) is set on the loader's sampler first, so that augmented versions draw
    different per-sample views."""
    root.mkdir(parents=True, exist_ok=True)
    positions = np.asarray(positions, dtype=np.int64)
    row_of = {int(p): i for i, p in enumerate(positions)}
    sources = list(sources)
    names = _names(rank, world_size)
    labels = np.full(len(positions), -1, dtype=np.int64)
    present = np.zeros((len(sources), len(positions)), dtype=bool)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(root / names["features"]) as tmp:
            feats = None
            for v, (loader, epoch) in enumerate(sources):
                if epoch is not None:
                    loader.sampler.set_epoch(epoch)
                what = desc if len(sources) == 1 else \
                    f"{desc} [{'eval' if v == 0 else f'aug {v}'}]"
                for x, y, pos in bar(loader, desc=what, enabled=progress, unit="batch"):
                    out = model(x.to(device, non_blocking=True)).float().cpu().numpy()
                    if feats is None:
                        feats = np.lib.format.open_memmap(
                            tmp, mode="w+", dtype=np.float16,
                            shape=(len(sources), len(positions), out.shape[1]))
                    half = out.astype(np.float16)
                    if not np.isfinite(half).all():
                        raise DataError(f"{desc}: features overflow float16 (|x| > 65504) or "
                                        "are not finite; the encoder's output is out of range")
                    rows = np.array([row_of[int(p)] for p in pos.tolist()], dtype=np.int64)
                    feats[v, rows] = half
                    present[v, rows] = True
                    labels[rows] = y.numpy()
            if feats is None:
                raise DataError(f"{desc}: the loader gave no samples to encode")
            feats.flush()
            keep = present.all(0)
            if not keep.all():  # samples skipped under data.loader.on_error=skip: left out
                kept = np.array(feats[:, keep])
                del feats
                with open(tmp, "wb") as fh:
                    np.save(fh, kept)
                positions, labels = positions[keep], labels[keep]
            else:
                del feats
    finally:
        model.train(was_training)
    _save_npy(root / names["labels"], labels)
    _save_npy(root / names["positions"], positions)
    write_json_atomic(root / names["key"], {"digest": key_digest(key), "key": key,
                                            "rows": int(len(positions))})


def load_cache(root: Path, key: dict | None = None) -> FeatureCache:
    """The cache at ``root`` (whose key must be ``key`` when given), rows in manifest order."""
    root = Path(root)
    digest = None if key is None else key_digest(key)
    if digest is None:
        saved = sorted(root.glob("key.rank*-of-*.json"))
        if not saved:
            raise DataError(f"{root}: no finished feature cache there")
        digest = json.loads(saved[0].read_text())["digest"]
    world = _complete_world(root, digest)
    if world is None:
        raise DataError(f"{root}: the feature cache is incomplete or was built for another "
                        "encoder/manifest (some rank's share is missing or has another key)")
    meta = json.loads((root / _names(0, world)["key"]).read_text())
    if world == 1:
        n = _names(0, 1)
        return FeatureCache(root, np.load(root / n["features"], mmap_mode="r"),
                            np.load(root / n["labels"]), np.load(root / n["positions"]),
                            meta["key"])
    merged = root / "key.json"
    if not (merged.exists() and json.loads(merged.read_text()).get("digest") == digest
            and (root / "features.npy").exists()):
        _merge(root, world, meta)
    return FeatureCache(root, np.load(root / "features.npy", mmap_mode="r"),
                        np.load(root / "labels.npy"), np.load(root / "positions.npy"), meta["key"])


def _merge(root: Path, world: int, meta: dict) -> None:
    """Concatenate the ranks' shares in manifest (position) order into one file."""
    parts = [_names(r, world) for r in range(world)]
    positions = [np.load(root / p["positions"]) for p in parts]
    labels = [np.load(root / p["labels"]) for p in parts]
    feats = [np.load(root / p["features"], mmap_mode="r") for p in parts]
    all_pos = np.concatenate(positions)
    order = np.argsort(all_pos, kind="stable")
    if len(np.unique(all_pos)) != len(all_pos):
        raise DataError(f"{root}: rank shares overlap (a position is cached twice)")
    versions, dim = feats[0].shape[0], feats[0].shape[2]
    with atomic_path(root / "features.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                        shape=(versions, len(all_pos), dim))
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in positions])])
        dest = np.empty(len(all_pos), dtype=np.int64)
        dest[order] = np.arange(len(all_pos))
        for r, f in enumerate(feats):
            out[:, dest[offsets[r]:offsets[r + 1]]] = f
        out.flush()
        del out
    _save_npy(root / "labels.npy", np.concatenate(labels)[order])
    _save_npy(root / "positions.npy", all_pos[order])
    write_json_atomic(root / "key.json", {"digest": meta["digest"], "key": meta["key"],
                                          "world_size": world})
