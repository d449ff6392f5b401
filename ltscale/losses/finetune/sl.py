"""``sl``: SuperLoss over cross-entropy (Castells et al. 2020; seed 000 eq. 3–4).

The threshold τ_SL is ``tau_sl``: None for log C (seed 000), a number, or "mean" for a running
mean of the batch-mean base loss (momentum ``SUPERLOSS_MOMENTUM``), updated in training mode only
(and on the first batch seen)."""

from __future__ import annotations

import math

import torch

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss

SUPERLOSS_MOMENTUM = 0.9  # running-mean τ_SL (tau_sl="mean")


@register_loss("sl")
class SuperLoss(ClassificationLoss):
    """``confidence`` holds the last batch's σ* per sample (detached)."""

    def __init__(self, counts, **options):
        super().__init__(counts, **options)
        self.running_tau = C.RunningMean(SUPERLOSS_MOMENTUM) if self.config.tau_sl == "mean" \
            else None

    def base_loss(self, logits, targets):
        return C.cross_entropy(logits, targets)

    def per_sample(self, logits, targets):
        base = self.base_loss(logits, targets)
        tau_sl, lam = self.config.tau_sl, self.config.lam
        if tau_sl is None:
            tau = math.log(self.num_classes)
        elif tau_sl == "mean":
            if self.training or self.running_tau.value is None:
                self.running_tau.update(base.detach().mean())
            tau = self.running_tau.value
        else:
            tau = tau_sl
        self.confidence = C.superloss_confidence(base, tau, lam).detach()
        return (base - tau) * self.confidence + lam * torch.log(self.confidence) ** 2
