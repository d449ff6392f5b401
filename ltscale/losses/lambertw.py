"""The principal branch W0 of the Lambert W function (w·e^w = x) for real x ≥ −1/e, in torch."""

from __future__ import annotations

import math

import torch

_BRANCH_POINT = -1.0 / math.e


def lambertw(x: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """W0(x) by Halley's method, computed in float64; inputs below −1/e are clamped to it."""
    dtype = x.dtype
    x = x.detach().to(torch.float64).clamp_min(_BRANCH_POINT)
    # start: series about the branch point near −1/e, log-based guess for large x, x elsewhere
    p = torch.sqrt((2.0 * (math.e * x + 1.0)).clamp_min(0.0))
    near_branch = -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p ** 3
    large = torch.log(x.clamp_min(1.0)) - torch.log(torch.log(x.clamp_min(1.0)).clamp_min(1e-12) + 1)
    w = torch.where(x < -0.25, near_branch, torch.where(x > 3.0, large, torch.log1p(x.clamp_min(-0.25))))
    for _ in range(iterations):
        ew = torch.exp(w)
        f = w * ew - x
        wp1 = w + 1.0
        denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1).where(wp1.abs() > 1e-12, torch.ones_like(w))
        step = f / denom.where(denom.abs() > 1e-300, torch.ones_like(w))
        w = w - step.where(wp1.abs() > 1e-12, torch.zeros_like(w))
    return w.to(dtype)
