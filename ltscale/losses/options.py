"""What a recipe may say about each fine-tuning loss: its options, with defaults and bounds, and
the classifier its logits assume. This module imports no torch, so a recipe validates in a
fraction of a second (``config/supervised.py`` builds ``finetune.loss`` from ``LOSS_OPTIONS``);
``register_loss(name)`` binds the options registered here under the same name to the loss class
as its ``Config`` (a loss defined outside ltscale may instead nest its own ``Config``).

Options are flat in a recipe and shared by every loss that declares them, so an option another
loss already has is declared by inheriting that loss's options class."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from ltscale.core.errors import RecipeError
from ltscale.core.registry import Registry
from ltscale.core.section import Section

LOSS_OPTIONS = Registry("loss", error=RecipeError, plural="losses")  # name → options class


def loss_options(*names: str):
    """Class decorator: the options of the losses ``names``."""
    def deco(cls):
        for name in names:
            LOSS_OPTIONS.register(name, cls)
        return cls

    return deco


class LossOptions(Section):
    """Options of a loss. Numbers must be finite; like every ``Section``, a flag is no number
    (``tau: true`` is an error, not 1.0). ``classifier``: the classifier the loss's margins and
    scale assume, "linear" logits or "cosine" ones in [−1, 1] (LDAM, Cao et al. 2019); heads and
    the supervised method build it from here."""

    model_config = ConfigDict(allow_inf_nan=False)
    classifier: ClassVar[Literal["linear", "cosine"]] = "linear"


loss_options("ce", "balanced_softmax")(LossOptions)  # no options


class ReductionOption(LossOptions):
    # how class weights enter the batch average: "mean" = Σ w_y·ℓ / B, "weight_sum" =
    # Σ w_y·ℓ / Σ w_y (PyTorch's F.cross_entropy(weight=w)); None: the loss's paper's choice
    reduction: Literal["mean", "weight_sum"] | None = None


@loss_options("la")
class LAOptions(LossOptions):
    tau: float = 1.0  # logit adjustment strength τ (seed 000: 1)


@loss_options("sl")
class SLOptions(LossOptions):
    lam: float = Field(4.0, gt=0)  # SuperLoss λ (seed 000: 4)
    tau_sl: float | Literal["mean"] | None = None  # threshold; None = log C, "mean" = EMA


@loss_options("la_sl")
class LASLOptions(LAOptions, SLOptions):
    pass


@loss_options("focal")
class FocalOptions(LossOptions):
    # focusing parameter γ (0: cross-entropy); 2 as in Lin et al. 2017, §3.2 ("γ = 2 works
    # best in our experiments") and Table 1a/1b. Cao et al.'s code (and so Yang & Xu 2020's
    # recipes) use γ = 1 for their focal baselines and set it explicitly.
    gamma: float = Field(2.0, ge=0)


@loss_options("cb")
class CBOptions(ReductionOption):
    beta: float = Field(0.9999, ge=0, lt=1)  # class-balanced β (Cui et al.'s CIFAR value)


@loss_options("cb_focal")
class CBFocalOptions(CBOptions, FocalOptions):
    pass


@loss_options("drw")
class DRWOptions(ReductionOption):
    drw_start: float = Field(0.8, ge=0, le=1)    # re-weighting from this fraction of epochs
    drw_beta: float = Field(0.9999, ge=0, lt=1)  # class-balanced β of the deferred weights


@loss_options("ldam")
class LDAMOptions(LossOptions):
    classifier: ClassVar[Literal["linear", "cosine"]] = "cosine"  # margins assume [−1, 1] logits
    max_margin: float = Field(0.5, gt=0)  # the largest margin (Cao et al.: 0.5)
    scale: float = Field(30.0, gt=0)      # logit scale s (Cao et al.: 30)


@loss_options("ldam_drw")
class LDAMDRWOptions(LDAMOptions, DRWOptions):
    pass
