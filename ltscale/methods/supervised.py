"""Supervised training of encoder + linear classifier on the manifest's observed labels: the
"from scratch" baseline of seed 000, run by the same engine as the SSL methods."""

from __future__ import annotations

from torch import nn

from ltscale.losses.registry import classification_loss
from ltscale.methods import register_method


@register_method("supervised")
class Supervised(nn.Module):
    views = 1
    uses_labels = True  # trains on the labeled role only

    def __init__(self, encoder: nn.Module, num_classes: int, class_counts: list[int],
                 loss: str = "ce", loss_options: dict | None = None):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feat_dim, num_classes)
        # the loss holds the class counts and log prior as (non-persistent) buffers
        self.loss_fn = classification_loss(loss, class_counts, **(loss_options or {}))

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Start of epoch ``epoch`` (0-based) of ``epochs``: lets scheduled losses (DRW) switch."""
        self.loss_fn.set_epoch(epoch, epochs)

    def logits(self, x):
        return self.classifier(self.encoder(x))

    def forward(self, batch):
        x, y = batch[0], batch[1]
        logits = self.logits(x)
        loss = self.loss_fn(logits, y).mean()
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}
