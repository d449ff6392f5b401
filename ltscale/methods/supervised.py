"""Supervised training of encoder + classifier on labels: the "from scratch" baseline of seed 000,
end-to-end fine-tuning (``finetune.mode: partial | full``) and the self-training student of Yang &
Xu 2020, all run by the same engine as the SSL methods.

LDAM losses get a cosine classifier (their margins and scale assume logits in [−1, 1], as in Cao
et al. 2019); every other loss a linear one. ``sample_weights`` (one weight per training position,
the batch's ``positions`` index it) scale each sample's loss before the batch mean: the
pseudo-labelled samples of self-training carry the unlabeled weight ω, the labeled ones 1."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.losses import classification_loss, loss_class
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.models.classifier import CosineLinear


@register_method("supervised")
class Supervised(PretrainMethod):
    views = 1
    uses_labels = True  # trains on the labeled role only

    def __init__(self, encoder: nn.Module, num_classes: int, class_counts: list[int],
                 loss: str = "ce", loss_options: dict | None = None, sample_weights=None):
        super().__init__()
        self.encoder = encoder
        self.classifier_kind = loss_class(loss).classifier
        self.classifier = CosineLinear(encoder.feat_dim, num_classes) \
            if self.classifier_kind == "cosine" else nn.Linear(encoder.feat_dim, num_classes)
        # the loss holds the class counts and log prior as (non-persistent) buffers
        self.loss_fn = classification_loss(loss, class_counts, **(loss_options or {}))
        weights = None
        if sample_weights is not None:
            weights = torch.as_tensor(sample_weights, dtype=torch.float32).flatten()
            if weights.numel() == 0 or not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError("supervised: sample_weights must be a non-empty sequence of "
                                 "finite, non-negative weights (one per training position)")
        # derived from the training set, not learned: rebuilt by whoever builds the method
        self.register_buffer("sample_weights", weights, persistent=False)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Start of epoch ``epoch`` (0-based) of ``epochs``: lets scheduled losses (DRW) switch."""
        self.loss_fn.set_epoch(epoch, epochs)

    def logits(self, x):
        return self.classifier(self.encoder(x))

    def forward(self, batch):
        x, y = batch[0], batch[1]
        logits = self.logits(x)
        per_sample = self.loss_fn(logits, y)
        if self.sample_weights is not None:
            if len(batch) < 3:
                raise ValueError("supervised with sample_weights needs the batch's positions "
                                 "(batch[2], as the manifest loaders give them)")
            per_sample = per_sample * self.sample_weights[batch[2].long()]
        loss = per_sample.mean()  # (1/B) Σ w_i ℓ_i: L(D_L) + ω·L(D_U) over the batch
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}
