"""Run a frozen encoder over a loader and collect features and labels."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.core.progress import bar


@torch.no_grad()
def encode(encoder: nn.Module, loader, device: torch.device, *, desc: str = "encode",
           progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y, _ in bar(loader, desc=desc, enabled=progress, unit="batch"):
        feats.append(encoder(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
