"""Supervised contrastive pretraining on the observed labels: SupCon (Khosla et al. 2020; every
same-label view of the global batch is a positive) and KCL (Kang et al. 2021; k same-label views
drawn per anchor, plus its own other view). Two views, an MLP projector, negatives from all
ranks (gathered with gradients, as SimCLR). τ = 0.1 as in SupCon and SBCL's SCL/KCL baselines;
KCL k = 6."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.engine.dist import gather, gather_with_grad, rank
from ltscale.losses.supcon import kcl_loss, supcon_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


def two_view_projections(encoder: nn.Module, projector: nn.Module, views: torch.Tensor):
    """(z1, z2), each (B, d): the projections of both views of a (B, 2, C, H, W) batch, computed
    in one forward so batch norm sees both."""
    b = views.shape[0]
    z = projector(encoder(views.flatten(0, 1)))
    return z.view(b, 2, -1).unbind(1)


def global_batch(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> dict:
    """The loss keywords for this rank's anchors against the global batch."""
    return {"z_all1": gather_with_grad(z1), "z_all2": gather_with_grad(z2),
            "labels_all": gather(labels), "offset": rank() * z1.shape[0]}


@register_method("supcon")
class SupCon(PretrainMethod):
    views = 2
    uses_labels = True  # trains on the labeled role only

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, out_dim: int = 128,
                 proj_layers: int = 2, temperature: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.temperature = temperature

    def contrast(self, z1, z2, labels):
        return supcon_loss(z1, z2, labels, self.temperature, **global_batch(z1, z2, labels))

    def forward(self, batch):
        z1, z2 = two_view_projections(self.encoder, self.projector, batch[0])
        return {"loss": self.contrast(z1, z2, batch[1]), "z_std": z_std(z1)}


@register_method("kcl")
class KCL(SupCon):
    """SupCon with a fixed number ``k`` of positives per anchor (class-balanced positives)."""

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, out_dim: int = 128,
                 proj_layers: int = 2, temperature: float = 0.1, k: int = 6):
        super().__init__(encoder, proj_dim, out_dim, proj_layers, temperature)
        if k < 1:
            raise ValueError(f"kcl: k must be at least 1 (got {k})")
        self.k = k

    def contrast(self, z1, z2, labels):
        return kcl_loss(z1, z2, labels, self.k, self.temperature,
                        **global_batch(z1, z2, labels))
