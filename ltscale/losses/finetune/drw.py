"""``drw``: cross-entropy, class-balanced from epoch ⌈drw_start·epochs⌉ on (deferred re-weighting,
Cao et al. 2019): 160 of 200 epochs with the default, as in their code. The schedule follows
``set_epoch(epoch, epochs)``; before the first call the loss is unweighted.

Reduction: Cao et al.'s code (which Yang & Xu 2020 build on) applies the weights through
``F.cross_entropy(weight=w)``, whose batch value is Σ w_y·ℓ / Σ w_y: the default ("weight_sum")
here; ``reduction: mean`` gives Σ w_y·ℓ / B. Before the weights switch on both are the plain mean."""

from __future__ import annotations

import math

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("drw")
class DeferredReweighting(ClassificationLoss):
    paper_reduction = "weight_sum"

    def __init__(self, counts, **options):
        super().__init__(counts, **options)
        self.register_buffer("class_balanced", C.class_balanced_weights(
            counts, self.config.drw_beta), persistent=False)
        self.weights_on = False

    def drw_epoch(self, epochs: int) -> int:
        """The first (0-based) epoch with class-balanced weights."""
        return math.ceil(self.config.drw_start * epochs - 1e-9)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.weights_on = epoch >= self.drw_epoch(epochs)

    @property
    def class_weights(self):
        return self.class_balanced if self.weights_on else None

    def per_sample(self, logits, targets):
        return self.weigh(C.cross_entropy(logits, targets), targets)
