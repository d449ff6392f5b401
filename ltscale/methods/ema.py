"""A momentum (EMA) target network, held by the methods that need one (MoCo, BYOL).

The target is a frozen deep copy of the online modules applied in sequence (e.g. encoder then
projector). It is never trained: its parameters have ``requires_grad=False`` and methods leave
them out of ``param_groups()``, so the optimizer keeps no state for them. ``update`` moves them
towards the online parameters, θ_t ← m·θ_t + (1 − m)·θ_o; its buffers (BN running statistics)
stay its own, updated by its own forward passes as in the MoCo and BYOL implementations."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's schedule τ = 1 − (1 − τ_base)·(cos(π k / K) + 1) / 2: τ_base at k = 0, 1 at k = K."""
    k = min(max(step, 0), max(total, 1))
    return 1 - (1 - base) * (math.cos(math.pi * k / max(total, 1)) + 1) / 2


class EMA(nn.Module):
    keep_fp32 = ("target",)  # updates of weight 1 − m ≈ 0.001 vanish in bf16 (engine/precision)

    def __init__(self, *online: nn.Module):
        super().__init__()
        self.target = nn.Sequential(*(copy.deepcopy(m) for m in online))
        self.target.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target(x)

    @torch.no_grad()
    def update(self, momentum: float, *online: nn.Module) -> None:
        """θ_t ← m·θ_t + (1 − m)·θ_o for the online modules given in construction order."""
        src = [p for m in online for p in m.parameters()]
        dst = list(self.target.parameters())
        if len(src) != len(dst):
            raise ValueError(f"EMA.update: {len(src)} online parameters for {len(dst)} target "
                             "ones; pass the online modules in the order the EMA was built from")
        # the online weights may be bf16 (DeepSpeed): the target accumulates in its own fp32
        torch._foreach_lerp_(dst, [s.detach().to(d.dtype) for s, d in zip(src, dst)], 1 - momentum)
