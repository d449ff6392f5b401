"""Write a source into WebDataset tar shards plus an index and a dataset card.

Each sample is two tar members, ``<key>.<ext>`` (the encoded image) and ``<key>.cls`` (the label
as text), the layout the ``webdataset`` library reads. The whole dataset is built in a temporary
directory and renamed into place at the end, so a failed build never leaves a half-written
dataset where a good one was expected.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from ltscale.progress import bar as progress_bar

from ltscale import __version__
from ltscale.atomic import write_json_atomic
from ltscale.data.index import CARD_FILE, ShardIndex
from ltscale.data.sources.base import Source
from ltscale.errors import DataError

DEFAULT_SHARD_BYTES = 1 << 30


class _ShardWriter:
    def __init__(self, directory: Path, prefix: str, max_bytes: int):
        self.directory, self.prefix, self.max_bytes = directory, prefix, max_bytes
        self.names: list[str] = []
        self.tar: tarfile.TarFile | None = None

    def _open_next(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.names):06d}.tar"
        self.names.append(name)
        self.tar = tarfile.open(self.directory / name, "w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes, mtime: float) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o444
        self.tar.addfile(info, io.BytesIO(data))
        # after addfile the stream sits at the end of the 512-byte padded data block
        return self.tar.offset - (-(-len(data) // 512) * 512)

    def write(self, key: str, ext: str, data: bytes, label: int, mtime: float) -> tuple[int, int]:
        if self.tar is None or self.tar.offset >= self.max_bytes:
            self._open_next()
        offset = self._add(f"{key}.{ext}", data, mtime)
        self._add(f"{key}.cls", str(label).encode(), mtime)
        return len(self.names) - 1, offset

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_shards(source: Source, out: str | Path, *, source_kind: str, source_path: str,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
                 progress: bool = True) -> ShardIndex:
    """Write every split of ``source`` into shards under ``out``; return the index."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it (the old dataset "
                        "stays in place until the new one is complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        index = _write(source, work, shard_bytes, progress)
        card = _card(source, index, work, source_kind, source_path)
        index.save(work)
        write_json_atomic(work / CARD_FILE, card)
        if out.exists():
            trash = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, trash)
            os.replace(work, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    index.root = out
    return index


def _write(source: Source, work: Path, shard_bytes: int, progress: bool) -> ShardIndex:
    cols: dict[str, list] = {c: [] for c in ("key", "shard", "offset", "size", "label", "split")}
    splits = source.splits()
    mtime = time.time()
    writers = {s: _ShardWriter(work, s, shard_bytes) for s in splits}
    all_names: list[str] = []
    for split_no, split in enumerate(splits):
        writer = writers[split]
        for sample in progress_bar(source.samples(split), total=source.count(split),
                                   enabled=progress, desc=f"shards [{split}]", unit="img"):
            if not 0 <= sample.label < len(source.classes):
                raise DataError(f"sample {sample.key} has label {sample.label}, outside the "
                                f"{len(source.classes)} classes of the source")
            shard, offset = writer.write(sample.key, sample.ext, sample.data, sample.label, mtime)
            cols["key"].append(sample.key)
            cols["shard"].append(len(all_names) + shard)
            cols["offset"].append(offset)
            cols["size"].append(len(sample.data))
            cols["label"].append(sample.label)
            cols["split"].append(split_no)
        writer.close()
        all_names.extend(writer.names)
    return ShardIndex(
        key=np.array(cols["key"]), shard=np.array(cols["shard"], dtype=np.int32),
        offset=np.array(cols["offset"], dtype=np.int64), size=np.array(cols["size"], dtype=np.int64),
        label=np.array(cols["label"], dtype=np.int64), split=np.array(cols["split"], dtype=np.int8),
        shards=all_names, splits=splits, classes=list(source.classes))


def _card(source: Source, index: ShardIndex, work: Path, kind: str, path: str) -> dict:
    per_split = {}
    for split in index.splits:
        ids = index.split_ids(split)
        counts = np.bincount(index.label[ids], minlength=index.num_classes)
        per_split[split] = {"samples": int(len(ids)), "class_counts": counts.tolist()}
    return {
        "name": getattr(source, "name", work.name),
        "source": {"kind": kind, "path": str(path)},
        "classes": index.classes,
        "splits": per_split,
        "image_bytes": int(index.size.sum()),
        "shards": [{"name": n, "bytes": (work / n).stat().st_size, "sha256": _sha256(work / n)}
                   for n in index.shards],
        "index_hash": index.content_hash(),
        "encoding": "png (lossless)",
        "format": "webdataset tar: <key>.<ext> image, <key>.cls label",
        "ltscale_version": __version__,
    }
