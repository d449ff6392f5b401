"""``ldam``: label-distribution-aware margin loss (Cao et al. 2019), CE on s·(z − m_y·onehot(y))
with m_c ∝ n_c^(−1/4). Meant for cosine logits: the fine-tuning stage gives LDAM heads a cosine
classifier. Unweighted, so it has no ``reduction`` option (``ldam_drw`` adds the weights)."""

from __future__ import annotations

from ltscale.losses import classification as C
from ltscale.losses._registry import register_loss
from ltscale.losses.base import ClassificationLoss


@register_loss("ldam")
class LDAM(ClassificationLoss):
    def __init__(self, counts, **options):
        super().__init__(counts, **options)
        self.register_buffer("margins", C.ldam_margins(counts, self.config.max_margin),
                             persistent=False)

    def per_sample(self, logits, targets):
        return self.weigh(C.ldam_loss(logits, targets, self.margins, self.config.scale), targets)
