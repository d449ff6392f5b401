"""The index and dataset card of a set of shards: the columns of every sample (key, split,
shard, byte span, image hash, labels), gathered from the shards ``data.shards`` wrote or from
shards indexed where they lie (``in_place``: each tar mapped once, its images hashed in place),
and the card that describes them (with the field hashes `data verify` checks)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from ltscale.core.errors import DataError
from ltscale.core.version import __version__
from ltscale.data.card import HASHES, field_hashes, split_summary
from ltscale.data.index import CARD_FILE, IMAGE_HASH, IMAGE_HASH_BYTES, ShardIndex
from ltscale.data.ownership import OWNER_MARKER
from ltscale.data.sources.base import NO_LABEL, SampleRef, Source


def image_digest(data: bytes) -> bytes:
    """What the index's ``image_sha256`` column holds for an image: its SHA-256's first bytes."""
    return hashlib.sha256(data).digest()[:IMAGE_HASH_BYTES]



def columns(source: Source, refs_in_order, spans, shard_of) -> tuple[dict, dict]:
    cols = {"key": [], "split": [], "shard": [], "offset": [], "size": [], "ext": [],
            "label": [], "path": [], IMAGE_HASH: []}
    extra = {k: [] for k in source.extra_labels}
    splits = source.splits()
    for ref, (offset, size, digest), shard in zip(refs_in_order, spans, shard_of):
        cols["key"].append(ref.key)
        cols["split"].append(splits.index(ref.split))
        cols["shard"].append(shard)
        cols["offset"].append(offset)
        cols["size"].append(size)
        cols[IMAGE_HASH].append(digest)
        cols["ext"].append(ref.ext)
        cols["label"].append(ref.label)
        cols["path"].append(ref.path)
        given = dict(ref.extra)
        for k in extra:
            extra[k].append(given.get(k, NO_LABEL))
    cols["key"] = np.array(cols["key"], dtype=str)
    cols["ext"] = np.array(cols["ext"], dtype=str)
    cols["path"] = np.array(cols["path"], dtype=str)
    cols[IMAGE_HASH] = np.frombuffer(b"".join(cols[IMAGE_HASH]),
                                     dtype=np.uint8).reshape(-1, IMAGE_HASH_BYTES)
    return cols, extra


def assemble(source: Source, jobs: list, results) -> ShardIndex:
    """The index of the shards ``jobs`` wrote (``results``: each job's (offset, size, digest))."""
    refs = [r for j in jobs for r in j.refs]
    spans = [s for _, job_spans, _ in results for s in job_spans]
    shard_of = [i for i, j in enumerate(jobs) for _ in j.refs]
    cols, extra = columns(source, refs, spans, shard_of)
    return ShardIndex(shards=[j.name for j in jobs], splits=source.splits(),
                      classes=source.classes, columns=cols, extra=extra,
                      extra_classes=source.extra_labels)


def index_in_place(source: Source, refs: dict[str, list[SampleRef]]
                    ) -> tuple[ShardIndex, dict[str, str]]:
    rows = [r for split in source.splits() for r in refs[split]]
    spans, shas = in_place_spans(source, rows)
    cols, extra = columns(source, rows, spans, [r.locator[0] for r in rows])
    return ShardIndex(shards=[str(p) for p in source.in_place], splits=source.splits(),
                      classes=source.classes, columns=cols, extra=extra,
                      extra_classes=source.extra_labels), shas


def in_place_spans(source: Source, rows: list[SampleRef]):
    """(offset, size, digest) of every sample of shards indexed in place, and the SHA-256 of
    each shard: each tar is mapped once, its images hashed where they lie (no copy)."""
    import mmap

    spans: list[tuple[int, int, bytes] | None] = [None] * len(rows)
    by_shard: dict[int, list[int]] = {}
    shas: dict[str, str] = {}
    for i, r in enumerate(rows):
        by_shard.setdefault(r.locator[0], []).append(i)
    for shard_no, members in by_shard.items():
        path = source.in_place[shard_no]
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                shas[str(path)] = hashlib.sha256(view).hexdigest()
                for i in members:
                    _, offset, size = rows[i].locator
                    if offset + size > len(mm):
                        raise DataError(f"{path}: sample {rows[i].key} ends after the file")
                    spans[i] = (offset, size, image_digest(view[offset:offset + size]))
            finally:
                view.release()
    return spans, shas


def card(source: Source, index: ShardIndex, shard_info: list[dict], kind: str, path: str) -> dict:
    """The dataset card; its ``field_hashes`` let `data verify` name a field edited later."""
    files = sorted({CARD_FILE, "index.npz"} | (set() if getattr(source, "in_place", False)
                                                 else {s["name"] for s in shard_info}))
    out = {
        "written_by": OWNER_MARKER,
        "files": files,
        "name": getattr(source, "name", Path(path).name),
        "source": {"kind": kind, "path": str(path)},
        "classes": index.classes,
        "extra_labels": index.extra_classes,
        "splits": split_summary(index),
        "image_bytes": int(index.size.sum()),
        "image_formats": dict(Counter(index.ext.tolist())),
        "shards": shard_info,
        "in_place": bool(getattr(source, "in_place", False)),
        "index_hash": index.content_hash(),
        "format": "webdataset tar: <key>.<ext> image, <key>.cls label, <key>.<name>.cls extra labels",
        "ltscale_version": __version__,
    }
    return out | {HASHES: field_hashes(out)}
