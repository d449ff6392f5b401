"""``focal``: focal loss −(1 − p_y)^γ·log p_y (Lin et al. 2017)."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("focal")
class Focal(ClassificationLoss):
    def per_sample(self, logits, targets):
        return self.weigh(C.focal_loss(logits, targets, self.config.gamma), targets)
