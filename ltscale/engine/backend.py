"""Backends adapt the one training loop to an execution mode. A backend knows the device, rank and
world size, wraps the model and performs backward/step; the loop never branches on the mode."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but CUDA is not available on this machine")
    return torch.device(name)


class LocalBackend:
    """One process on one device."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, device: str = "auto"):
        self.device = resolve_device(device)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        return batch
