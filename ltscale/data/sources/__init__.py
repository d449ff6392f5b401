"""Source adapters behind one factory: ``open_source(kind, path, **options)``.

Each adapter is one module; it is imported only when its kind is opened.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ltscale.data.sources.base import NO_LABEL, RawSample, SampleRef, Source, iter_samples
from ltscale.errors import DataError

# kind -> module that registers it
_MODULES = {
    "idx": "idx",
    "cifar10": "cifar", "cifar100": "cifar",
    "imagefolder": "imagefolder",
    "imagenet_lt": "lt_splits", "places_lt": "lt_splits",
    "inat2017": "inat", "inat2018": "inat", "inat2019": "inat",
    "clothing1m": "clothing1m",
    "svhn": "svhn",
    "webdataset": "webdataset",
}
_SOURCES: dict[str, Callable[..., Source]] = {}


def register_source(kind: str):
    def deco(factory):
        _SOURCES[kind] = factory
        return factory

    return deco


def source_kinds() -> list[str]:
    return sorted(_MODULES)


def open_source(kind: str, path: str | Path, **options) -> Source:
    if kind not in _MODULES:
        raise DataError(f"unknown source kind {kind!r}; known kinds: {', '.join(source_kinds())}")
    if kind not in _SOURCES:
        importlib.import_module(f"ltscale.data.sources.{_MODULES[kind]}")
    try:
        return _SOURCES[kind](Path(path), **options)
    except TypeError as exc:
        raise DataError(f"source {kind!r}: bad options {sorted(options)} ({exc})") from None


__all__ = ["NO_LABEL", "RawSample", "SampleRef", "Source", "iter_samples", "open_source",
           "register_source", "source_kinds"]
