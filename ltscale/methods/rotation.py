"""Rotation prediction (Gidaris et al. 2018; the CIFAR SSP of seeds 001/002): a linear head on
the encoder's features classifies each image's rotation among 0/90/180/270°. It reads the
``rotation`` augmentation preset, whose views are the four rotations in that order."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.losses.ssl import rotation_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.simclr import z_std


@register_method("rotation")
class Rotation(PretrainMethod):
    views = 4
    uses_labels = False  # the rotation labels come from the view order, not the manifest

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feat_dim, 4)

    def forward(self, batch):
        views = batch[0]  # (B, 4, C, H, W), view k rotated by k·90°
        b, v = views.shape[:2]
        if v != 4:
            raise ValueError(f"rotation takes the 4 rotated views of each image, got {v} views")
        h = self.encoder(views.flatten(0, 1))
        logits = self.head(h)
        targets = torch.arange(4, device=logits.device).repeat(b)  # matches flatten(0, 1) order
        loss = rotation_loss(logits, targets)
        acc = (logits.detach().argmax(1) == targets).float().mean()
        return {"loss": loss, "acc": acc, "z_std": z_std(h)}
