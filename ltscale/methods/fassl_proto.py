"""FASSL stage one, frequency-aware prototype learning (Lin, Chen, Wang, §3.2.1): the network
F^T (encoder + projector) and K prototypes P are trained together with NT-Xent on the similarity
distributions h = P·z of two views (Eq. 1–2, temperature β = 0.2, K = 128). Rare classes are seen
less often, so most prototypes come to describe frequent ones; stage two (``fassl``) weights
samples by their similarity to them.

F^T starts from an SDCLR network (the paper's Algorithm 1; SimCLR in its Table 9 ablation): as a
later stage of ``pretrain.stages``, ``init_from`` takes over the previous stage's encoder and
projector. As a first stage it trains from scratch (Table 9's "w/o initialization").
Projector defaults are SDCLR's (512 → 512 → 128), so that its head can be taken over."""

from __future__ import annotations

import math

import torch
from torch import nn

from ltscale.core.errors import RecipeError
from ltscale.engine.dist import gather_with_grad, rank
from ltscale.losses.fassl import prototype_contrastive_loss
from ltscale.methods._registry import method_class, method_names, register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.probe import OnlineProbe
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


def unwrap(method: nn.Module) -> nn.Module:
    """The pretraining method inside monitors such as ``OnlineProbe``."""
    while isinstance(method, OnlineProbe):
        method = method.method
    return method


def method_name(method: nn.Module) -> str:
    """The registered name of ``method``'s class (its class name when unregistered)."""
    for name in method_names():
        if type(method) is method_class(name):
            return name
    return type(method).__name__


def layer_widths(head: nn.Module) -> list[int]:
    """Input width of each Linear layer of ``head`` followed by the last one's output width."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return [m.in_features for m in linears] + [linears[-1].out_features] if linears else []


def take_projector(target: nn.Module, source: nn.Module, who: str, whom: str) -> None:
    """Load ``source``'s projector into ``target``'s, refusing a projector of another shape."""
    mine, theirs = target.projector.state_dict(), source.projector.state_dict()
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
        raise RecipeError(f"{who} cannot take over the projector of the {whom} stage: its layer "
                          f"widths are {layer_widths(source.projector)}, {who}'s are "
                          f"{layer_widths(target.projector)}; give {who} the same proj_dim, "
                          "out_dim and proj_layers")
    target.projector.load_state_dict(theirs)


@register_method("fassl_proto")
class FASSLProto(PretrainMethod):
    views = 2
    uses_labels = False
    # the stages fassl_proto can start from: F^T initialised from SDCLR (or SimCLR, Table 9)
    starts_from = ("sdclr", "simclr")

    def __init__(self, encoder: nn.Module, proj_dim: int = 512, out_dim: int = 128,
                 proj_layers: int = 3, prototypes: int = 128, beta: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        # P (K × D), randomly initialised (Algorithm 1, line 3) as a bias-free Linear layer is
        self.prototypes = nn.Parameter(torch.empty(prototypes, out_dim))
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))
        self.beta = beta

    def init_from(self, previous: nn.Module) -> None:
        """Take the encoder and projector of the SDCLR (or SimCLR) stage before this one."""
        previous = unwrap(previous)
        if method_name(previous) not in self.starts_from:
            raise RecipeError(f"fassl_proto cannot start from a {method_name(previous)} stage: "
                              "it takes over the encoder and projector of an "
                              f"{' or '.join(self.starts_from)} stage (FASSL initialises its "
                              "network from SDCLR)")
        take_projector(self, previous, "fassl_proto", method_name(previous))
        self.encoder.load_state_dict(previous.encoder.state_dict())

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        z = self.projector(self.encoder(views.flatten(0, 1)))
        z1, z2 = z.view(b, 2, -1).unbind(1)
        loss = prototype_contrastive_loss(z1, z2, self.prototypes, self.beta,
                                          gather_with_grad(z1), gather_with_grad(z2),
                                          offset=rank() * b)
        return {"loss": loss, "z_std": z_std(z1)}
