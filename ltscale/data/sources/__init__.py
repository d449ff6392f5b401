"""Source adapters behind one factory: ``open_source(kind, path, **options)``.

Each adapter is one module of this package that registers its kind(s) with
``@register_source(kind)``; the first ``open_source`` or ``source_kinds`` call imports every
module of the package (they import nothing heavy at module level), so adding a source is one
file plus its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable

from ltscale.core.errors import DataError
from ltscale.data.sources.base import NO_LABEL, RawSample, SampleRef, Source, iter_samples

_SOURCES: dict[str, Callable[..., Source]] = {}
_DISCOVERED = False


def register_source(kind: str):
    def deco(factory):
        if kind in _SOURCES and _SOURCES[kind] is not factory:
            raise ValueError(f"source kind {kind!r} is registered twice")
        _SOURCES[kind] = factory
        return factory

    return deco


def _discover() -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
            importlib.import_module(f"{__name__}.{module}")
        _DISCOVERED = True


def source_kinds() -> list[str]:
    _discover()
    return sorted(_SOURCES)


def open_source(kind: str, path: str | Path, **options) -> Source:
    if kind not in source_kinds():
        raise DataError(f"unknown source kind {kind!r}; known kinds: {', '.join(source_kinds())}")
    try:
        return _SOURCES[kind](Path(path), **options)
    except TypeError as exc:
        raise DataError(f"source {kind!r}: bad options {sorted(options)} ({exc})") from None


__all__ = ["NO_LABEL", "RawSample", "SampleRef", "Source", "iter_samples", "open_source",
           "register_source", "source_kinds"]
