"""``la``: logit-adjusted cross-entropy (Menon et al. 2021; seed 000 eq. 2)."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("la")
class LogitAdjusted(ClassificationLoss):
    def base_loss(self, logits, targets):
        return C.logit_adjusted_loss(logits, targets, self.log_prior, self.config.tau)

    def per_sample(self, logits, targets):
        return self.base_loss(logits, targets)
