"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn


def split_decay(params: list[nn.Parameter], decay_all: bool = False) -> tuple[list, list]:
    """Weights get weight decay; norm parameters and biases (1-d tensors) do not, unless
    ``decay_all``."""
    decay = [p for p in params if p.requires_grad and (decay_all or p.ndim > 1)]
    no_decay = [p for p in params if p.requires_grad and not decay_all and p.ndim <= 1]
    return decay, no_decay


def build_optimizer(groups: list[dict], cfg, batch_size: int) -> torch.optim.Optimizer:
    """``groups``: dicts with ``params`` and optional flags (``fixed_lr``). Sets ``base_lr`` on
    each: ``cfg.lr`` for weights, ``cfg.bias_lr`` (when set) for biases and norm parameters, both
    × batch_size / 256 with ``scale_lr``."""
    scale = batch_size / 256 if cfg.scale_lr else 1.0
    lr = cfg.lr * scale
    bias_lr = (cfg.lr if cfg.bias_lr is None else cfg.bias_lr) * scale
    param_groups = []
    for g in groups:
        decay, no_decay = split_decay(list(g["params"]), cfg.decay_norm_bias)
        extra = {k: v for k, v in g.items() if k != "params"}
        param_groups.append({"params": decay, "weight_decay": cfg.weight_decay, "base_lr": lr,
                             **extra})
        param_groups.append({"params": no_decay, "weight_decay": 0.0, "base_lr": bias_lr,
                             **extra})
    param_groups = [g | {"lr": g["base_lr"]} for g in param_groups if g["params"]]
    if cfg.name in ("sgd", "lars"):  # what the onecycle schedule cycles momentum around
        param_groups = [g | {"base_momentum": cfg.momentum} for g in param_groups]
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "lars":
        for g in param_groups:  # norms and biases: no decay and no layer-wise adaptation
            g["lars_exclude"] = g["weight_decay"] == 0.0
        return LARS(param_groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    if cfg.name == "adam":
        return torch.optim.Adam(param_groups, lr=lr)
    return torch.optim.AdamW(param_groups, lr=lr)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as used for large-batch SSL: each
    parameter's update (gradient + weight decay) is rescaled by η·‖w‖ / ‖update‖ before SGD
    with momentum. Groups with ``lars_exclude`` (norms, biases) take plain SGD steps."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] \
                    else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


# onecycle (Smith & Topin 2019, as torch.optim.lr_scheduler.OneCycleLR): the lr starts at
# peak / ONECYCLE_DIV, rises along a half cosine to the peak over the warm-up steps, then falls
# along a half cosine to peak / (ONECYCLE_DIV · ONECYCLE_FINAL_DIV)
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, t))))


def lr_factor(step: int, total_steps: int, warmup_steps: float, schedule: str) -> float:
    """The lr of step ``step`` (0-based) of ``total_steps`` as a fraction of the peak.

    cosine / constant: linear warm-up from 0 over ``warmup_steps``, then cosine decay to 0 (or
    constant). onecycle: see ``ONECYCLE_DIV``."""
    if schedule == "onecycle":
        low, peak = 1.0 / ONECYCLE_DIV, max(0, warmup_steps - 1)  # the peak's step
        if step <= peak:
            return _cos_between(low, 1.0, step / peak) if peak else 1.0
        t = (step - peak) / max(1, total_steps - 1 - peak)
        return _cos_between(1.0, low / ONECYCLE_FINAL_DIV, t)
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


ONECYCLE_MOMENTUM = 0.05  # onecycle: momentum ± this (0.85–0.95 at 0.9, as OneCycleLR's)


def momentum_offset(step: int, total_steps: int, warmup_steps: float, schedule: str) -> float:
    """onecycle: the momentum's offset from its base at step ``step``, against the lr: +0.05
    at the start, −0.05 at the lr's peak, back to +0.05 at the end (half cosines, as
    ``OneCycleLR(cycle_momentum=True)``); 0 for the other schedules."""
    if schedule != "onecycle":
        return 0.0
    peak = max(0, warmup_steps - 1)
    if step <= peak:
        t = step / peak if peak else 1.0
        return _cos_between(ONECYCLE_MOMENTUM, -ONECYCLE_MOMENTUM, t)
    t = (step - peak) / max(1, total_steps - 1 - peak)
    return _cos_between(-ONECYCLE_MOMENTUM, ONECYCLE_MOMENTUM, t)


def set_momentum(optimizer: torch.optim.Optimizer, offset: float) -> None:
    """Momentum of every group that has a ``base_momentum`` (SGD, LARS): base + ``offset``."""
    for g in optimizer.param_groups:
        if "base_momentum" in g and "momentum" in g:
            g["momentum"] = min(0.999, max(0.0, g["base_momentum"] + offset))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g.get("fixed_lr") else g["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
