"""``focal``: focal loss −(1 − p_y)^γ·log p_y (Lin et al. 2017)."""

from __future__ import annotations

from pydantic import Field

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss, LossOptions


@register_loss("focal")
class Focal(ClassificationLoss):
    class Config(LossOptions):
        gamma: float = Field(1.0, ge=0)  # focusing parameter γ (0: cross-entropy)

    def per_sample(self, logits, targets):
        return self.weigh(C.focal_loss(logits, targets, self.config.gamma), targets)
