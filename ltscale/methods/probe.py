"""An online linear probe: a monitor that trains a linear classifier on detached encoder features
alongside any pretraining method (the labelled samples of each batch; unlabelled ones, label −1,
are ignored). Its accuracy during training is an early, cheap signal of representation quality.

The features come from an extra forward pass of the first view through the encoder in eval mode
under ``no_grad``: the probe neither changes the method's gradients nor its BatchNorm statistics,
so a run with the probe follows the same trajectory as one without (the probe's own parameters
join the optimizer).
"""

from __future__ import annotations

import torch
from torch import nn

from ltscale.methods.base import PretrainMethod


class OnlineProbe(nn.Module):
    def __init__(self, method: PretrainMethod, num_classes: int):
        super().__init__()
        self.method = method
        self.probe = nn.Linear(method.encoder.feat_dim, num_classes)

    # the wrapped method's interface, so the loop and the stages see no difference
    views = property(lambda self: self.method.views)
    uses_labels = property(lambda self: self.method.uses_labels)
    encoder = property(lambda self: self.method.encoder)

    @property
    def projector(self):
        return getattr(self.method, "projector", None)

    def param_groups(self):
        return self.method.param_groups() + [{"params": list(self.probe.parameters())}]

    def after_step(self, step: int, total: int) -> None:
        self.method.after_step(step, total)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.method.set_epoch(epoch, epochs)

    def forward(self, batch):
        out = self.method(batch)
        x, y = batch[0], batch[1]
        labelled = y >= 0
        if labelled.any():
            first = x[:, 0] if x.dim() == 5 else x
            encoder = self.method.encoder
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                feats = encoder(first[labelled])
            encoder.train(was_training)
            logits = self.probe(feats.float())
            probe_loss = nn.functional.cross_entropy(logits, y[labelled])
            out["loss"] = out["loss"] + probe_loss
            out["probe_loss"] = probe_loss.detach()
            out["probe_acc"] = (logits.argmax(1) == y[labelled]).float().mean()
        return out
