"""``cb``: class-balanced cross-entropy (Cui et al. 2019): w_y·CE with w ∝ 1/E_{n_y}, the inverse
effective number of samples, normalised to Σ_c w_c = C (``classification.class_balanced_weights``).

Reduction: Cui et al.'s reference code normalises the weights to sum to C and averages the
weighted losses over the batch (Σ w_y·ℓ / B), the default ("mean") here; ``reduction:
weight_sum`` divides by Σ w_y instead, as ``F.cross_entropy(weight=w)`` (the "CE + Reweight" of
Cao et al.'s and Yang & Xu's code) does."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("cb")
class ClassBalanced(ClassificationLoss):
    paper_reduction = "mean"

    def __init__(self, counts, **options):
        super().__init__(counts, **options)
        self.register_buffer("class_balanced", C.class_balanced_weights(counts, self.config.beta),
                             persistent=False)

    @property
    def class_weights(self):
        return self.class_balanced

    def per_sample(self, logits, targets):
        return self.weigh(C.cross_entropy(logits, targets), targets)
