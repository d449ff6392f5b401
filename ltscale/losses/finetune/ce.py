"""``ce``: plain cross-entropy."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("ce")
class CrossEntropy(ClassificationLoss):
    def per_sample(self, logits, targets):
        return C.cross_entropy(logits, targets)
