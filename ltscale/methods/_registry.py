"""The registry of pretraining methods: name → class, found by importing every module of the
package the first time it is asked (sorted, so registration is deterministic), and the
training-set facts a method may declare in ``needs``. A method's recipe options live in
``methods/options.py`` (torch-free); ``register_method`` binds them to the class as ``Config``.
Nothing here imports torch: the recipe layer may ask for options without loading the methods."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from ltscale.core.registry import Registry
from ltscale.methods.options import METHOD_OPTIONS

if TYPE_CHECKING:
    from torch import nn


def _discover() -> None:
    """Import every module of this package (by name: they import this registry)."""
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


METHODS = Registry("method", discover=_discover)  # name → method class


def register_method(name: str):
    """Register a method class under ``name``; its ``Config`` is the options class registered
    under that name in ``methods/options.py`` (internal methods, such as the supervised
    baseline's, have none and keep ``Config = None``)."""
    def deco(cls):
        cls.Config = METHOD_OPTIONS.get(name) if name in METHOD_OPTIONS else None
        return METHODS.register(name, cls)

    return deco


def method_configs() -> tuple[type, ...]:
    """The options class of every method a recipe can name, in registration order."""
    return tuple(METHOD_OPTIONS.entries().values())


def method_config(name: str) -> type:
    return METHOD_OPTIONS.get(name)


# what a method may ask for in ``needs``: the training set it will see, in the dataset's order
METHOD_INPUTS = {
    "num_classes": "number of classes of the index",
    "class_counts": "observed labeled samples per class (list of int)",
    "labels": "observed label of every training sample, indexed by the batch's positions "
              "(int64 array; -1 for unlabeled samples)",
    "num_samples": "number of training samples (positions run 0 … num_samples − 1)",
}


def method_class(name: str):
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


def create_method(name: str, encoder: nn.Module, **options) -> nn.Module:
    return method_class(name)(encoder, **options)
