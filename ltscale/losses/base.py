"""The contract every fine-tuning loss fulfils, and the base of their options classes.

A fine-tuning loss is a ``ClassificationLoss``: built from the training class counts and its
options, it maps (logits (B, C), targets (B,)) to a per-sample loss (B,). The trainer averages
those values over the batch (``finetune/trainer.py: train_head``, ``methods/supervised.py``).
Each loss class carries its options as ``Config`` (a ``LossOptions``, declared torch-free in
``losses/options.py`` and bound by ``register_loss``): constructing the loss validates them there,
and the recipe's ``finetune.loss`` section is built from all of them (``config/supervised.py``).

Derived tensors (``counts``, ``log_prior``, and whatever a loss adds) are non-persistent buffers:
they follow ``.to(device)`` but stay out of a ``state_dict``."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import ValidationError
from torch import nn

from ltscale.core.errors import RecipeError
from ltscale.losses.options import LossOptions


class ClassificationLoss(nn.Module):
    """Class counts (+ options) → per-sample loss(logits, targets).

    Subclasses implement ``per_sample``; ``register_loss`` sets ``name``, ``Config`` and
    ``classifier``.
    ``confidence`` holds the last batch's per-sample confidence (detached) for losses that have one
    (SuperLoss's σ*) and stays None otherwise. ``set_epoch(epoch, epochs)`` (0-based ``epoch``) is
    called when an epoch starts, for scheduled losses (DRW)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[LossOptions]] = LossOptions
    paper_reduction: ClassVar[str] = "mean"  # what ``reduction: None`` means for this loss
    # the classifier this loss's margins and scale assume (its options' ``classifier``, bound
    # by ``register_loss``): "linear" logits, or "cosine" ones in [−1, 1]
    classifier: ClassVar[str] = "linear"

    def __init__(self, counts, **options):
        super().__init__()
        self.config = _validate(type(self), self.name or type(self).__name__, options)
        self.options = self.config.model_dump()
        n = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if n.numel() == 0 or (n < 0).any() or n.sum() <= 0:
            raise RecipeError(f"loss {self.name!r}: class counts must be non-negative with a "
                              f"positive total, got {n.tolist()}")
        self.num_classes = n.numel()
        clamped = n.clamp_min(1)  # an empty class gets one pseudo-sample in the prior (no log 0)
        self.register_buffer("counts", n.float(), persistent=False)
        self.register_buffer("log_prior", (clamped / clamped.sum()).log().float(), persistent=False)
        self.confidence: torch.Tensor | None = None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Start of epoch ``epoch`` (0-based) of ``epochs``; a no-op unless the loss is scheduled."""

    @property
    def class_weights(self) -> torch.Tensor | None:
        """The per-class weights currently applied (None: unweighted)."""
        return None

    @property
    def reduction(self) -> str:
        """How class weights enter the batch average: the ``reduction`` option where the loss has
        one and it is set, else ``paper_reduction``."""
        return getattr(self.config, "reduction", None) or self.paper_reduction

    def weigh(self, loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``loss`` (per sample) times the target's current class weight w_y (unchanged without
        weights). The caller averages per-sample values over the batch (``train_head``:
        ``loss_fn(logits, y).mean()``; ``Supervised.forward``: ``per_sample.mean()``, after
        self-training's sample weights), so with reduction "mean" the batch loss is Σ w_y·ℓ / B,
        and with "weight_sum" every value is also scaled by B / Σ_batch w_y, making the batch mean
        Σ w_y·ℓ / Σ w_y. That denominator is the sum over the batch the loss sees: one rank's
        batch under DDP (whose gradient average then averages the ranks' weighted means)."""
        w = self.class_weights
        if w is None:
            return loss
        wy = w.to(loss)[targets]
        if self.reduction == "weight_sum":
            wy = wy * (wy.numel() / wy.sum().clamp_min(torch.finfo(wy.dtype).tiny))
        return loss * wy

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of each sample; every registered loss defines it (the contract's one method
        without a default)."""
        raise NotImplementedError(f"{type(self).__name__} does not define per_sample")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"loss {self.name!r}: expected logits of shape (B, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        return self.per_sample(logits, targets)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name!r}, classes={self.num_classes}" + (f", {opts}" if opts else "")


def _validate(cls: type[ClassificationLoss], name: str, options: dict) -> LossOptions:
    accepted = list(cls.Config.model_fields)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it accepts: {', '.join(accepted)}" if accepted else "it takes no options"
        raise RecipeError(f"loss {name!r} does not take option(s) {', '.join(unknown)}; {takes}")
    try:
        return cls.Config(**options)
    except ValidationError as e:
        problems: dict[str, list[str]] = {}
        for err in e.errors():
            problems.setdefault(str(err["loc"][0]) if err["loc"] else "?", []).append(err["msg"])
        raise RecipeError("; ".join(
            f"loss {name!r}: option {key}={options.get(key)!r} is invalid ({' or '.join(msgs)})"
            for key, msgs in problems.items())) from None
