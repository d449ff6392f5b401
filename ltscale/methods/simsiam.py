"""SimSiam (Chen & He 2021): two views, projector, predictor, stop-gradient. Seed 000 uses a
2-layer projector instead of 3 (the default here) and SGD with lr 0.03·batch/256 (its recipes);
the default optimizer is the paper's ImageNet one (``SimSiamCfg.default_optim``)."""

from __future__ import annotations

from torch import nn

from ltscale.losses.ssl import simsiam_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.models.heads import mlp


@register_method("simsiam")
class SimSiam(PretrainMethod):
    views = 2
    uses_labels = False  # trains on labeled and unlabeled images alike

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, pred_dim: int = 512,
                 proj_layers: int = 2, fix_pred_lr: bool = True, bn_per_view: bool = True):
        super().__init__()
        self.encoder = encoder
        dims = [encoder.feat_dim] + [proj_dim] * proj_layers
        self.projector = mlp(dims, last_bn=True, last_bn_affine=False)
        self.predictor = mlp([proj_dim, pred_dim, proj_dim], last_bn=False)
        self.fix_pred_lr, self.bn_per_view = fix_pred_lr, bn_per_view

    def param_groups(self):
        return [{"params": list(self.encoder.parameters()) + list(self.projector.parameters())},
                {"params": list(self.predictor.parameters()), "fixed_lr": self.fix_pred_lr}]

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        if self.bn_per_view:  # views[:, v] keeps the channels-last strides the engine gave
            z1, z2 = (self.projector(self.encoder(views[:, v])) for v in (0, 1))
            p1, p2 = self.predictor(z1), self.predictor(z2)
        else:  # one pass over both views: BN statistics over the 2B images
            z = self.projector(self.encoder(views.flatten(0, 1)))
            z1, z2 = z.view(b, 2, -1).unbind(1)
            p1, p2 = self.predictor(z).view(b, 2, -1).unbind(1)
        loss = simsiam_loss(p1, p2, z1, z2)
        # collapse monitor: std of the normalised output, ~1/sqrt(d) when healthy, 0 when collapsed
        z_std = nn.functional.normalize(z1.detach(), dim=1).std(0).mean()
        return {"loss": loss, "z_std": z_std}
