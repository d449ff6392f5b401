"""``cb_focal``: the focal loss with class-balanced weights (Cui et al. 2019). Reduction "mean" by
default, as in Cui et al.'s code and in Cao et al.'s ``FocalLoss`` (a batch mean of the weighted
focal terms)."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.finetune.cb import ClassBalanced


@register_loss("cb_focal")
class ClassBalancedFocal(ClassBalanced):
    def per_sample(self, logits, targets):
        return self.weigh(C.focal_loss(logits, targets, self.config.gamma), targets)
