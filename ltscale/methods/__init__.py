"""Pretraining methods by name. A method is an nn.Module holding the encoder and its heads whose
``forward(batch)`` returns a dict with a scalar ``loss``; optional hooks the engine calls:
``param_groups(base_lr)`` and ``after_step(step, total_steps)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

_METHODS: dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str):
    def deco(cls):
        _METHODS[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    return sorted(_METHODS)


def create_method(name: str, encoder: nn.Module, **options) -> nn.Module:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return _METHODS[name](encoder, **options)


from ltscale.methods import (barlow as _barlow, byol as _byol, moco as _moco,  # noqa: E402,F401
                             rotation as _rotation, simclr as _simclr, simsiam as _simsiam,
                             supervised as _supervised)
