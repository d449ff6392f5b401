"""``ldam_drw``: LDAM with the deferred re-weighting schedule of ``drw`` (Cao et al. 2019)."""

from __future__ import annotations

from ltscale.losses._registry import register_loss
from ltscale.losses.finetune.drw import DeferredReweighting
from ltscale.losses.finetune.ldam import LDAM


@register_loss("ldam_drw")
class LDAMDeferredReweighting(LDAM, DeferredReweighting):
    """LDAM's margins and per-sample loss; DRW's weights, schedule and reduction ("weight_sum",
    as Cao et al.'s ``LDAMLoss``: ``F.cross_entropy(weight=w)``)."""

