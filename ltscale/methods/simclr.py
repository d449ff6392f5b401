"""SimCLR (Chen et al. 2020): two views, an MLP projector, NT-Xent whose negatives are the other
images' views of the global batch (gathered from all ranks, gradients flowing back to each).
Default optimizer: the SimCLR paper's LARS (``SimCLRCfg.default_optim``); seed 000 trains it
with Adam instead (lr 0.001, weight decay 1e-6, batch 512; its recipes say so); T = 0.5 for CIFAR."""

from __future__ import annotations

from torch import nn

from ltscale.engine.dist import gather_with_grad, rank
from ltscale.losses.ssl import nt_xent
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.models.heads import mlp


def projector_dims(feat_dim: int, proj_dim: int, out_dim: int, layers: int) -> list[int]:
    """Widths of an MLP head: ``layers`` Linear layers, hidden width ``proj_dim`` (the first
    layer's, which fine-tuning's ``proj_head`` mode starts from), output ``out_dim``."""
    if layers < 2:
        raise ValueError(f"a projector needs at least 2 layers (got {layers})")
    return [feat_dim] + [proj_dim] * (layers - 1) + [out_dim]


def z_std(z):
    """Collapse monitor: std over the batch of the L2-normalised output, averaged over
    dimensions: about 1/sqrt(d) when healthy, 0 when collapsed."""
    return nn.functional.normalize(z.detach().float(), dim=1).std(0).mean()


@register_method("simclr")
class SimCLR(PretrainMethod):
    views = 2
    uses_labels = False

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, out_dim: int = 128,
                 proj_layers: int = 2, temperature: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.temperature = temperature

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        z = self.projector(self.encoder(views.flatten(0, 1)))
        z1, z2 = z.view(b, 2, -1).unbind(1)
        loss = nt_xent(z1, z2, self.temperature, gather_with_grad(z1), gather_with_grad(z2),
                       offset=rank() * b)
        return {"loss": loss, "z_std": z_std(z1)}
