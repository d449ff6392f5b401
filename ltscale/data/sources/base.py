"""The contract every raw-format adapter follows.

A source lists its samples cheaply as :class:`SampleRef` rows (key, label(s), original path, byte
size when known) and reads one sample's encoded bytes on demand. Listing never decodes images, so
a shard build can plan its shards up front and write them in parallel workers, each of which calls
:meth:`Source.read` for its own samples. Adapters validate their input while listing: a label out
of range, an unknown class name, a duplicate key or a missing image file is a :class:`DataError`
naming the file and line (or key) at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from ltscale.core.errors import DataError

NO_LABEL = -1
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


@dataclass(frozen=True)
class SampleRef:
    """One sample as a source lists it, before any image bytes are read."""

    key: str                 # unique in the dataset; letters, digits, _ and - (see key_from_path)
    split: str
    label: int               # class index, or NO_LABEL (-1) where the source gives none
    ext: str                 # extension of the encoded bytes: "jpg", "png", ...
    path: str = ""           # the sample's original path or name inside the source
    size: int | None = None  # byte size of the encoded image when known without reading it
    extra: tuple[tuple[str, int], ...] = ()  # further labels, e.g. (("noisy_label", 3),)
    locator: Any = None      # whatever read() needs to find the bytes (a path, an array row)


@dataclass(frozen=True)
class RawSample:
    """One image as a source yields it: encoded bytes, never decoded pixels."""

    key: str
    data: bytes
    ext: str
    label: int
    split: str
    meta: dict = field(default_factory=dict)


class Source(Protocol):
    name: str
    classes: list[str]
    # names of further integer label columns this source fills (e.g. ["coarse_label"]) and the
    # class names of each, when they differ from ``classes``
    extra_labels: dict[str, list[str] | None]

    def splits(self) -> list[str]: ...

    def refs(self, split: str) -> list[SampleRef]: ...

    def read(self, ref: SampleRef) -> bytes: ...


def parse_splits(splits, available: list[str], source: str, *, known: list[str] | None = None,
                 have: str = "choose from") -> list[str]:
    """The ``splits`` option of a source (``"train,test"``, a list, or None/"" for all of
    ``available``) as split names in the source's order. Names outside ``known`` (default:
    ``available``) are refused in one line naming them and the choices."""
    known = list(available if known is None else known)
    if splits is None or splits == "":
        return list(available)
    wanted = [s.strip() for s in (splits.split(",") if isinstance(splits, str) else splits)]
    wanted = [s for s in wanted if s]
    unknown = [s for s in wanted if s not in known]
    if unknown or not wanted:
        raise DataError(f"{source}: option splits={splits!r} names "
                        f"{', '.join(unknown) or 'no split'}; {have} {', '.join(known)} "
                        "(comma-separated)")
    return [s for s in known if s in wanted]


def key_from_path(relpath: str) -> str:
    """A WebDataset-safe key from a relative file path: extension dropped, every character other
    than letters, digits, ``_`` and ``-`` replaced by ``_`` (so keys hold no dots or slashes)."""
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem.strip("/"))


def check_key(key: str, where: str) -> None:
    if not _KEY_OK.match(key):
        raise DataError(f"{where}: sample key {key!r} is not usable as a WebDataset key "
                        "(letters, digits, '_' and '-' only, no dots, no absolute or '..' parts)")


def iter_samples(source: Source, split: str) -> Iterator[RawSample]:
    """Every sample of ``split`` with its bytes: (key, encoded image bytes, label, metadata)."""
    for ref in source.refs(split):
        meta = {"path": ref.path, **dict(ref.extra)}
        yield RawSample(ref.key, source.read(ref), ref.ext, ref.label, split, meta)


def ext_of(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return {"jpeg": "jpg"}.get(ext, ext)
