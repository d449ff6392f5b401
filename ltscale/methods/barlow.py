"""Barlow Twins (Zbontar et al. 2021): drive the cross-correlation of the two views' embeddings,
each dimension standardised over the global batch, to the identity. Seed 000: λ = 0.005 and a
3-layer projector of width 2048 (hidden and output; the defaults here), Adam with base lr 0.003
(its recipes); the default optimizer is the paper's LARS (``BarlowTwinsCfg.default_optim``).

Every rank standardises with the global batch's mean and variance and builds C from all ranks'
rows, so the loss equals the one-process loss on the concatenated batch; the cross-rank sums go
through ``gather_with_grad``, so gradients reach every rank's embeddings exactly (the same loss
on every rank, gradients summed by the gather and averaged by data parallelism)."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.engine.dist import gather_with_grad, world_size
from ltscale.losses.ssl import barlow_twins_loss, batch_standardize, cross_correlation
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of ``x``, differentiable (identity in one process)."""
    return gather_with_grad(x.unsqueeze(0)).sum(0)


def global_standardize(z: torch.Tensor, n: int, eps: float = 1e-5) -> torch.Tensor:
    """This rank's rows standardised with the mean and biased variance of the global batch of
    ``n`` rows (two passes over local sums: mean first, then centred squares)."""
    z = z.float()
    mean = global_sum(z.sum(0)) / n
    var = global_sum((z - mean).pow(2).sum(0)) / n
    return batch_standardize(z, mean, var, eps)


@register_method("barlow_twins")
class BarlowTwins(PretrainMethod):
    views = 2
    uses_labels = False

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, out_dim: int = 2048,
                 proj_layers: int = 3, lam: float = 0.005):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.lam = lam

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        n = b * world_size()
        z = self.projector(self.encoder(views.flatten(0, 1)))
        z1, z2 = z.view(b, 2, -1).unbind(1)
        z1n, z2n = global_standardize(z1, n), global_standardize(z2, n)
        c = cross_correlation(gather_with_grad(z1n), gather_with_grad(z2n), n)
        return {"loss": barlow_twins_loss(c, self.lam), "z_std": z_std(z1)}
