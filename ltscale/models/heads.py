"""Projector, predictor and classifier heads."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], last_bn: bool = True, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear → BN → ReLU between layers; the output layer optionally gets a BN."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=last_bn_affine))
    return nn.Sequential(*layers)
