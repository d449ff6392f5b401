"""``la_sl``: SuperLoss over the logit-adjusted loss (seed 000's LA+SL)."""

from __future__ import annotations

from ltscale.losses._registry import register_loss
from ltscale.losses.finetune.la import LogitAdjusted
from ltscale.losses.finetune.sl import SuperLoss


@register_loss("la_sl")
class LogitAdjustedSuperLoss(SuperLoss):
    base_loss = LogitAdjusted.base_loss
