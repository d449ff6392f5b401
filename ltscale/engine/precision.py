"""What stays fp32 when a backend stores a model in bf16/fp16 (DeepSpeed's mixed precision).

Autocast (the local and DDP backends) keeps every parameter and buffer fp32 and only computes in
low precision. DeepSpeed instead casts the module's parameters to bf16/fp16 and keeps fp32 master
copies of the *optimised* ones inside its optimizer. Anything else that accumulates small
updates would then be stored in low precision and stop moving: an EMA target updated with weight
0.001–0.01 rounds most updates away in bf16 (8 bits of mantissa). So modules declare what must
stay fp32 in a class attribute ``keep_fp32``: names of their own buffers or child modules (a
child module keeps all its parameters and buffers). ``apply_fp32_policy`` enforces the
declarations after the backend has cast the model, and gives normalisation layers' running
statistics their weights' dtype (DeepSpeed casts parameters only; batch norm refuses bf16
weights with fp32 statistics).

A kept child module must not be optimised: its parameters have no fp32 master copy to restore
them from, and DeepSpeed's optimizer needs its parameters in the training dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def fp32_kept(model: nn.Module) -> tuple[list[str], list[str]]:
    """(qualified names of kept child modules, qualified names of kept buffers) of ``model``."""
    modules, buffers = [], []
    for prefix, module in model.named_modules():
        own_buffers = dict(module.named_buffers(recurse=False))
        children = dict(module.named_children())
        for name in getattr(module, "keep_fp32", ()):
            full = f"{prefix}.{name}" if prefix else name
            if name in children:
                modules.append(full)
            elif name in own_buffers:
                buffers.append(full)
            else:
                raise AttributeError(f"{type(module).__name__}.keep_fp32 names {name!r}, which is "
                                     "neither one of its buffers nor one of its child modules")
    return modules, buffers


def kept_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer ``keep_fp32`` declares (qualified name → tensor)."""
    modules, buffers = fp32_kept(model)
    out = {}
    for name in modules:
        sub = model.get_submodule(name)
        out |= {f"{name}.{k}": t for k, t in sub.named_parameters()}
        out |= {f"{name}.{k}": t for k, t in sub.named_buffers()}
    for name in buffers:
        out[name] = model.get_buffer(name)
    return out


@torch.no_grad()
def apply_fp32_policy(model: nn.Module, optimized: set[int] | None = None) -> None:
    """Restore fp32 for everything ``keep_fp32`` declares and align norm statistics with their
    weights, after a backend cast ``model``'s parameters. ``optimized``: ids of the parameters
    the optimizer steps; a kept module holding one of them is refused."""
    modules, _ = fp32_kept(model)
    for name in modules:
        for pname, p in model.get_submodule(name).named_parameters():
            if optimized is not None and id(p) in optimized:
                raise ValueError(f"{name}.{pname} is optimised but declared keep_fp32: a kept "
                                 "module must be moved only by its method (e.g. an EMA)")
    for module in model.modules():
        if isinstance(module, _NormBase) and module.weight is not None:
            for buf in module.buffers(recurse=False):
                if buf.is_floating_point():
                    buf.data = buf.data.to(module.weight.dtype)
    for t in kept_tensors(model).values():
        if t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()
