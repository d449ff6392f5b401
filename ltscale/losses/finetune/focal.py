"""``focal``: focal loss −(1 − p_y)^γ·log p_y (Lin et al. 2017)."""

from __future__ import annotations

from pydantic import Field

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss, LossOptions


@register_loss("focal")
class Focal(ClassificationLoss):
    class Config(LossOptions):
        # focusing parameter γ (0: cross-entropy); 2 as in Lin et al. 2017, §3.2 ("γ = 2 works
        # best in our experiments") and Table 1a/1b. Cao et al.'s code (and so Yang & Xu 2020's
        # recipes) use γ = 1 for their focal baselines and set it explicitly.
        gamma: float = Field(2.0, ge=0)

    def per_sample(self, logits, targets):
        return self.weigh(C.focal_loss(logits, targets, self.config.gamma), targets)
