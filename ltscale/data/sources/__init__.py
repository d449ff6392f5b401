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

from ltscale.core.errors import DataError
from ltscale.core.registry import Registry
from ltscale.data.sources.base import NO_LABEL, RawSample, SampleRef, Source, iter_samples


def _discover() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


SOURCES = Registry("source kind", discover=_discover, error=DataError, plural="kinds")


def register_source(kind: str):
    return SOURCES.register(kind)


def source_kinds() -> list[str]:
    return SOURCES.names()


def open_source(kind: str, path: str | Path, **options) -> Source:
    factory = SOURCES.get(kind)
    try:
        return factory(Path(path), **options)
    except TypeError as exc:
        raise DataError(f"source {kind!r}: bad options {sorted(options)} ({exc})") from None


__all__ = ["NO_LABEL", "RawSample", "SampleRef", "Source", "iter_samples", "open_source",
           "register_source", "source_kinds"]
