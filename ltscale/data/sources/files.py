"""Shared by adapters whose images are files named in list files (ImageNet-LT, iNaturalist,
Clothing1M) or found in folders (ImageFolder): path checks and SampleRefs read from disk."""

from __future__ import annotations

import os
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources.base import SampleRef, ext_of, key_from_path


def safe_relative(rel: str, where: str) -> str:
    """Refuse absolute paths and ``..`` components in a path read from a list file."""
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or ".." in parts:
        raise DataError(f"{where}: image path {rel!r} is absolute or contains '..'; list files "
                        "must name images relative to the image root")
    return rel


def file_ref(images: Path, rel: str, split: str, label: int, where: str,
             extra: tuple = ()) -> SampleRef:
    """A SampleRef for ``images/rel``; a missing file is an error naming ``where``."""
    path = images / safe_relative(rel, where)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise DataError(f"{where}: image {rel} not found under {images}") from None
    return SampleRef(key=key_from_path(rel), split=split, label=label, ext=ext_of(rel), path=rel,
                     size=size, extra=extra, locator=str(path))


def read_file(ref: SampleRef) -> bytes:
    with open(ref.locator, "rb") as fh:
        return fh.read()


class ListedFiles:
    """The ``Source`` methods of a source that lists its image files when it opens (ImageNet-LT,
    Places-LT, iNaturalist, Clothing1M): ``self.name`` and ``self._refs`` (split → refs, in the
    source's split order) are set by the subclass; each image is read whole from its file."""

    name: str
    _refs: dict[str, list[SampleRef]]

    def splits(self) -> list[str]:
        return list(self._refs)

    def refs(self, split: str) -> list[SampleRef]:
        if split not in self._refs:
            raise DataError(f"{self.name}: no split {split!r}; splits: {', '.join(self._refs)}")
        return self._refs[split]

    def read(self, ref: SampleRef) -> bytes:
        return read_file(ref)


def list_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def path_and_label(line: str, path: Path, n: int, num_classes: int | None) -> tuple[str, int]:
    """Split a ``relative/path.jpg LABEL`` line, checking the label."""
    parts = line.rsplit(None, 1)
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        raise DataError(f"{path}:{n}: expected 'relative/path.jpg LABEL', got {line!r}")
    label = int(parts[1])
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(f"{path}:{n}: label {label} is outside 0..{(num_classes or 1) - 1} "
                        f"({line!r})")
    return parts[0], label
