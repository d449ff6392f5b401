"""SDCLR, Self-Damaging Contrastive Learning (Jiang et al. 2021): SimCLR between the network and a
pruned copy of itself. One view goes through the dense encoder + projector, the other through
the self-competitor: the same weights with the smallest-magnitude fraction of every conv/linear
weight zeroed (masks recomputed from the current weights at the start of each epoch). Samples
the pruned network has "forgotten" (often the rare ones) disagree most and so weigh most in the
NT-Xent loss. FASSL (Lin et al.) starts from an SDCLR network.

The pruned branch is a ``functional_call`` of the same encoder with masked weights, so
``encoder`` stays a plain backbone and every parameter is used in each forward (DDP needs no
unused-parameter search). With ``dual_bn`` the pruned branch normalises with its own BN layers
(parameters and running statistics), as SDCLR's released code does (``--prune_dual_bn``); the
encoder's own BN layers are the dense branch's.

Defaults, from SDCLR's released CIFAR-LT settings (the FASSL paper gives none): prune ratio 0.9,
temperature 0.2, dual BN, a 3-layer projector 512 → 512 → 128 (its head for ResNet-18: hidden
width = feature width, 128 outputs; the output BN left out, as in ltscale's SimCLR). Pruning is
layer-wise by default; ``prune_scope: global`` uses one threshold over all weights, as the
released code does."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from ltscale.engine.dist import gather_with_grad, rank
from ltscale.losses.ssl import nt_xent
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.pruning import MagnitudeMasks
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class BranchNorms(nn.Module):
    """Private copies of a module's normalisation layers for a second branch (SDCLR's dual BN).

    ``tensors()`` maps the original layers' parameter and buffer names to the copies' tensors,
    for ``functional_call``: the copies' parameters train, their running statistics update in
    place, and the original module keeps its own."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.names = [name for name, m in module.named_modules() if isinstance(m, _NORMS)]
        self.copies = nn.ModuleDict({n.replace(".", "__"): copy.deepcopy(module.get_submodule(n))
                                     for n in self.names})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            norm = self.copies[name.replace(".", "__")]
            for key, t in list(norm.named_parameters(recurse=False)) + list(
                    norm.named_buffers(recurse=False)):
                if t is not None:
                    out[f"{name}.{key}"] = t
        return out


@register_method("sdclr")
class SDCLR(PretrainMethod):
    views = 2
    uses_labels = False

    def __init__(self, encoder: nn.Module, proj_dim: int = 512, out_dim: int = 128,
                 proj_layers: int = 3, temperature: float = 0.2, prune_ratio: float = 0.9,
                 prune_scope: str = "layer", dual_bn: bool = True):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.temperature = temperature
        self.masks = MagnitudeMasks(encoder, prune_ratio, prune_scope)
        self.dual_bn = dual_bn
        if dual_bn:
            self.pruned_encoder_norms = BranchNorms(encoder)
            self.pruned_projector_norms = BranchNorms(self.projector)

    @torch.no_grad()
    def set_epoch(self, epoch: int, epochs: int) -> None:
        """SDCLR re-prunes the current weights at the start of every epoch."""
        self.masks.recompute(self.encoder)

    def pruned_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The self-competitor's projection of ``x``: masked shared weights (and, with
        ``dual_bn``, the branch's own normalisation layers)."""
        enc = self.masks.masked(self.encoder)
        if self.dual_bn:
            enc |= self.pruned_encoder_norms.tensors()
        h = functional_call(self.encoder, enc, (x,))
        if not self.dual_bn:
            return self.projector(h)
        return functional_call(self.projector, self.pruned_projector_norms.tensors(), (h,))

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        z1 = self.projector(self.encoder(views[:, 0]))   # dense network, first view
        z2 = self.pruned_forward(views[:, 1])           # pruned self-competitor, second view
        loss = nt_xent(z1, z2, self.temperature, gather_with_grad(z1), gather_with_grad(z2),
                       offset=rank() * b)
        return {"loss": loss, "z_std": z_std(z1), "pruned_z_std": z_std(z2)}
