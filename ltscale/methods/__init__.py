"""Pretraining methods by name. A method is an nn.Module holding the encoder and its heads whose
``forward(batch)`` returns a dict with a scalar ``loss``; optional hooks the engine calls:
``param_groups()``, ``after_step(step, total_steps)`` and ``set_epoch(epoch, epochs)``.

A method that needs facts about its training set declares them in a class attribute ``needs``
(names from ``METHOD_INPUTS``); the pretraining stage passes them as keyword arguments. Other
class attributes the engine reads: ``replicated_buffers`` (buffers every rank updates alike, left
out of DDP's broadcasts), ``keep_fp32`` (buffers or child modules kept fp32 under any precision,
e.g. EMA targets and queues: ``engine/precision.py``) and ``requires_previous`` (the method whose
stage must come right before this one's).

``set_epoch`` runs when an epoch starts, once: a run resumed inside an epoch restores the
checkpoint over it (``engine/loop.py``), so the hook may depend on the current weights."""

from __future__ import annotations

from typing import Callable

from torch import nn

_METHODS: dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str):
    def deco(cls):
        _METHODS[name] = cls
        return cls

    return deco


# what a method may ask for in ``needs``: the training set it will see, in the dataset's order
METHOD_INPUTS = {
    "num_classes": "number of classes of the index",
    "class_counts": "observed labeled samples per class (list of int)",
    "labels": "observed label of every training sample, indexed by the batch's positions "
              "(int64 array; -1 for unlabeled samples)",
    "num_samples": "number of training samples (positions run 0 … num_samples − 1)",
}


def method_class(name: str):
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return _METHODS[name]


def method_names() -> list[str]:
    return sorted(_METHODS)


def create_method(name: str, encoder: nn.Module, **options) -> nn.Module:
    return method_class(name)(encoder, **options)


from ltscale.methods import (barlow as _barlow, byol as _byol, moco as _moco,  # noqa: E402,F401
                             rotation as _rotation, simclr as _simclr, simsiam as _simsiam,
                             supervised as _supervised)
from ltscale.methods import (fassl as _fassl, fassl_proto as _fassl_proto,  # noqa: E402,F401
                             sdclr as _sdclr)
from ltscale.methods import sbcl as _sbcl, supcon as _supcon  # noqa: E402,F401
