"""FASSL stage two, prototypical re-balanced self-supervised learning (Lin, Chen, Wang, §3.2.2):
a student (encoder + projector + an MLP predictor) regresses an EMA teacher's projection of the
other view, and each sample's term is weighted by φ(z^T, P) = 1 / exp(Σ_k ⟨z^T, p_k⟩) with the
teacher's feature z^T and the prototypes P of stage one (Eq. 3): samples unlike most prototypes,
i.e. likely rare-class ones, weigh more. Weights are clipped and normalised per (global) batch
(``frequency_weights``). The teacher follows θ_T ← τ·θ_T + (1 − τ)·θ_S with τ = 0.99 (Eq. 4,
Table 3); the prototypes stay fixed (Algorithm 1 updates only θ_S and θ_T).

This stage cannot run on its own: the weights need the prototypes learned by a ``fassl_proto``
stage, which ``init_from`` takes over together with that stage's encoder and projector; student
and teacher both start from them (Algorithm 1, line 12). Training refuses to start without them.
The loss is symmetrised over the two views like BYOL's, which the paper treats as FASSL with
uniform weights. The predictor's hidden width (512) is not given by the paper."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.core.errors import RecipeError
from ltscale.engine.dist import gather, rank
from ltscale.losses.fassl import frequency_weights, rebalanced_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.ema import EMA
from ltscale.methods.fassl_proto import FASSLProto, method_name, take_projector, unwrap
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


@register_method("fassl")
class FASSL(PretrainMethod):
    views = 2
    uses_labels = False
    requires_previous = "fassl_proto"  # the stage that must come right before this one
    keep_fp32 = ("prototypes",)

    def __init__(self, encoder: nn.Module, proj_dim: int = 512, out_dim: int = 128,
                 proj_layers: int = 3, pred_dim: int = 512, prototypes: int = 128,
                 momentum: float = 0.99, weight_clip: float = 3.0):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.predictor = mlp([out_dim, pred_dim, out_dim], last_bn=False)
        self.teacher = EMA(self.encoder, self.projector)
        self.momentum, self.weight_clip = momentum, weight_clip
        # stage one's prototypes, handed over by init_from; zeros (all samples weigh alike)
        # until then, and training refuses to start while has_prototypes is false
        self.register_buffer("prototypes", torch.zeros(prototypes, out_dim))
        self.register_buffer("has_prototypes", torch.zeros((), dtype=torch.bool))

    def param_groups(self):
        # the teacher moves only by the EMA and the prototypes are fixed: neither is optimised
        return [{"params": [p for m in (self.encoder, self.projector, self.predictor)
                            for p in m.parameters()]}]

    @torch.no_grad()
    def init_from(self, previous: nn.Module) -> None:
        """Take the encoder, projector and prototypes of the ``fassl_proto`` stage before this
        one; student and teacher both start from that network."""
        previous = unwrap(previous)
        if not isinstance(previous, FASSLProto):
            raise RecipeError(f"fassl cannot start from a {method_name(previous)} stage: it "
                              "needs the prototypes of a fassl_proto stage right before it "
                              "(FASSL's stage two weights samples by stage one's prototypes)")
        if previous.prototypes.shape != self.prototypes.shape:
            k, d = previous.prototypes.shape
            raise RecipeError(f"fassl has {self.prototypes.shape[0]} prototypes of width "
                              f"{self.prototypes.shape[1]} but the fassl_proto stage learned "
                              f"{k} of width {d}; set fassl's prototypes and out_dim to match")
        take_projector(self, previous, "fassl", "fassl_proto")
        self.encoder.load_state_dict(previous.encoder.state_dict())
        self.prototypes.copy_(previous.prototypes.detach())
        self.teacher.target.load_state_dict(nn.Sequential(self.encoder, self.projector)
                                            .state_dict())
        self.has_prototypes.fill_(True)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        if not bool(self.has_prototypes):
            raise RecipeError("fassl (FASSL's re-balanced stage) has no prototypes: put a "
                              "fassl_proto stage right before it in pretrain.stages, e.g. "
                              "sdclr → fassl_proto → fassl; the paper has no variant without "
                              "stage one's prototypes")

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(self.momentum, self.encoder, self.projector)

    def _weights(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the weights normalised over the global batch."""
        b = t.shape[0]
        w = frequency_weights(gather(t), self.prototypes, self.weight_clip)
        return w[rank() * b:(rank() + 1) * b]

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        x = views.flatten(0, 1)
        z = self.projector(self.encoder(x))
        p1, p2 = self.predictor(z).view(b, 2, -1).unbind(1)
        t1, t2 = self.teacher(x).view(b, 2, -1).unbind(1)
        w1, w2 = self._weights(t1), self._weights(t2)
        loss = rebalanced_loss(p1, t2, w2) + rebalanced_loss(p2, t1, w1)
        return {"loss": loss, "z_std": z_std(z.view(b, 2, -1)[:, 0]),
                "weight_max": torch.maximum(w1.max(), w2.max())}
