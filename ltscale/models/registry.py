"""Backbones by name, without importing torch: the names a recipe may give (``BACKBONE_NAMES``,
what recipe validation checks) and the registry of their constructors, which imports
``models/backbones.py`` the first time a backbone is built. A constructor registered under a name
not listed here is refused, and a test builds every listed name, so the two cannot drift."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ltscale.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# torchvision's ImageNet ResNets; the CIFAR ResNet-(6n+2) family; the tiny test-size ones
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "cifar_resnet20", "cifar_resnet32",
                  "cifar_resnet56", "cifar_resnet8", "resnet_tiny")


def _discover() -> None:
    importlib.import_module("ltscale.models.backbones")  # by name: it imports this registry


BACKBONES = Registry("backbone", discover=_discover)  # name → constructor(in_chans=, cifar_stem=)


def register_backbone(name: str):
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone {name!r} is not declared in ltscale/models/registry.py "
                         "(BACKBONE_NAMES, what recipe validation accepts)")
    return BACKBONES.register(name)


def backbone_names() -> list[str]:
    return sorted(BACKBONE_NAMES)


def create_backbone(name: str, *, in_chans: int = 3, cifar_stem: bool = False) -> nn.Module:
    return BACKBONES.get(name)(in_chans=in_chans, cifar_stem=cifar_stem)
