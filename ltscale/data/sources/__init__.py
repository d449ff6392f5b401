"""Source adapters behind one factory: ``open_source(kind, path)``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ltscale.data.sources.base import RawSample, Source
from ltscale.errors import DataError

_SOURCES: dict[str, Callable[..., Source]] = {}


def register_source(kind: str):
    def deco(factory):
        _SOURCES[kind] = factory
        return factory

    return deco


def source_kinds() -> list[str]:
    return sorted(_SOURCES)


def open_source(kind: str, path: str | Path, **options) -> Source:
    if kind not in _SOURCES:
        raise DataError(f"unknown source kind {kind!r}; known kinds: {', '.join(source_kinds())}")
    return _SOURCES[kind](Path(path), **options)


# adapters register themselves on import
from ltscale.data.sources import idx as _idx  # noqa: E402,F401

__all__ = ["RawSample", "Source", "open_source", "register_source", "source_kinds"]
