"""BYOL (Grill et al. 2020): an online encoder + projector + predictor regresses a target
network's projection of the other view; the target is an EMA of the online encoder + projector
with τ rising from τ_base to 1 on a cosine schedule. Heads 4096 → 256. Default optimizer: the
paper's LARS (``BYOLCfg.default_optim``); seed 000's recipes use Adam instead (lr 0.001·bs/256,
weight decay 1.5e-6)."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.losses.ssl import byol_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.ema import EMA, cosine_momentum
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


@register_method("byol")
class BYOL(PretrainMethod):
    views = 2
    uses_labels = False

    def __init__(self, encoder: nn.Module, proj_dim: int = 4096, out_dim: int = 256,
                 pred_dim: int = 4096, proj_layers: int = 2, tau_base: float = 0.996,
                 bn_per_view: bool = True):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.predictor = mlp([out_dim, pred_dim, out_dim], last_bn=False)
        self.target = EMA(self.encoder, self.projector)
        self.tau_base = tau_base
        self.tau = tau_base  # the last momentum used (a monitor)
        self.bn_per_view = bn_per_view

    def param_groups(self):
        # the target is only moved by the EMA: no optimizer state, no weight decay
        return [{"params": [p for m in (self.encoder, self.projector, self.predictor)
                            for p in m.parameters()]}]

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.tau = cosine_momentum(self.tau_base, step, total_steps)
        self.target.update(self.tau, self.encoder, self.projector)

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        if self.bn_per_view:  # views[:, v] keeps the channels-last strides the engine gave
            x1, x2 = views[:, 0], views[:, 1]
            z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
            p1, p2 = self.predictor(z1), self.predictor(z2)
            t1, t2 = self.target(x1), self.target(x2)
        else:  # one pass over both views: BN statistics over the 2B images
            x = views.flatten(0, 1)
            z = self.projector(self.encoder(x))
            z1 = z.view(b, 2, -1)[:, 0]
            p1, p2 = self.predictor(z).view(b, 2, -1).unbind(1)
            t1, t2 = self.target(x).view(b, 2, -1).unbind(1)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)  # symmetrised as in the paper (range [0, 8])
        return {"loss": loss, "z_std": z_std(z1), "tau": torch.tensor(self.tau)}
