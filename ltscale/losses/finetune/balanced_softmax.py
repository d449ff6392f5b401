"""``balanced_softmax``: cross-entropy on z + log n_c (Ren et al. 2020)."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("balanced_softmax")
class BalancedSoftmax(ClassificationLoss):
    def per_sample(self, logits, targets):
        return C.balanced_softmax_loss(logits, targets, self.counts)
