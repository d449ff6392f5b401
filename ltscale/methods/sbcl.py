"""SBCL (Hou et al. 2023, Algorithm 2): supervised contrastive pretraining on subclasses.

Warm-up: ``warmup_epochs`` epochs of SupCon or KCL. From then on, every ``update_every`` epochs
(at the epoch's start, in ``set_epoch``) each head class is re-clustered into balanced subclasses
and each class's temperature τ2(c) recomputed (``sbcl_clustering``), and the loss is the
bi-granularity one (``sbcl_loss``).

The features come from a bank (one row per training sample, the normalised mean of its two
views' projections) that every training step fills with the global batch's detached rows at
their positions, so every rank holds the same bank. The classes are shared out over the ranks to
cluster and the ids gathered; the temperatures are rank 0's: every rank then holds the same
assignment. Bank, assignment and temperatures are buffers, so a resumed run continues exactly (the loop restores
a mid-epoch checkpoint over the epoch's start hook, so the epoch is not clustered twice)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltscale.engine.dist import gather, rank, world_size
from ltscale.losses.supcon import kcl_loss, sbcl_loss, supcon_loss
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.sbcl_clustering import (
    balanced_subclasses,
    class_concentration,
    class_temperatures,
)
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.methods.supcon import global_batch, two_view_projections
from ltscale.models.heads import mlp


@register_method("sbcl")
class SBCL(PretrainMethod):
    views = 2
    uses_labels = True  # trains on the labeled role only
    needs = ("labels", "num_classes")
    # every rank writes the same gathered rows and clusters alike: DDP need not copy them
    replicated_buffers = ("labels", "bank", "seen", "subclass", "tau2")
    keep_fp32 = ("bank", "tau2")  # feature rows and temperatures, whatever the training precision

    def __init__(self, encoder: nn.Module, labels, num_classes: int, proj_dim: int = 2048,
                 out_dim: int = 128, proj_layers: int = 2, tau1: float = 0.1,
                 beta: float = 0.25, delta: int = 10, alpha: float = 10.0,
                 warmup_epochs: int = 10, warmup_loss: str = "supcon", k: int = 6,
                 update_every: int = 10, cluster_iters: int = 10):
        super().__init__()
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if labels.ndim != 1 or labels.numel() == 0:
            raise ValueError("sbcl: labels must be a non-empty 1-D array (one per sample)")
        bad = ((labels < 0) | (labels >= num_classes)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"sbcl: training sample {i} has label {int(labels[i])}, outside "
                             f"0 … {num_classes - 1}; SBCL trains on labeled samples only")
        if warmup_loss not in ("supcon", "kcl"):
            raise ValueError(f"sbcl: warmup_loss must be supcon or kcl (got {warmup_loss!r})")
        if update_every < 1:
            raise ValueError(f"sbcl: update_every must be at least 1 (got {update_every})")
        self.encoder = encoder
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.num_classes = num_classes
        self.tau1, self.beta, self.delta, self.alpha = tau1, beta, delta, alpha
        self.warmup_epochs, self.warmup_loss, self.k = warmup_epochs, warmup_loss, k
        self.update_every, self.cluster_iters = update_every, cluster_iters
        n = labels.numel()
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("bank", torch.zeros(n, out_dim))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("subclass", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("tau2", torch.full((num_classes,), float(tau1)))

    # --- clustering -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int, epochs: int) -> None:
        """At the start of epoch ``epoch``: re-cluster and update the temperatures when due."""
        due = epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.update_every == 0
        if due:
            self.recluster(seed=epoch)

    @torch.no_grad()
    def recluster(self, seed: int) -> None:
        world = world_size()
        mine = list(range(rank(), self.num_classes, world))
        ids = balanced_subclasses(self.bank, self.labels, self.seen, self.num_classes,
                                  self.delta, self.cluster_iters, seed, classes=mine)
        self.subclass.copy_(gather(ids).view(world, -1).max(0).values)
        phi = class_concentration(self.bank, self.labels, self.seen, self.num_classes, self.alpha)
        phi = gather(phi)[:self.num_classes]  # rank 0's
        self.tau2.copy_(class_temperatures(phi, self.tau1))

    @torch.no_grad()
    def _remember(self, z1: torch.Tensor, z2: torch.Tensor, positions: torch.Tensor) -> None:
        rows = F.normalize(F.normalize(z1.float(), dim=1) + F.normalize(z2.float(), dim=1), dim=1)
        rows, positions = gather(rows), gather(positions.to(self.bank.device).long())
        self.bank[positions] = rows.to(self.bank.dtype)
        self.seen[positions] = True

    @property
    def clustered(self) -> bool:
        """Whether the subclasses have been assigned (the warm-up is over)."""
        return int(self.subclass[0]) >= 0  # every training sample gets a subclass at once

    # --- training -------------------------------------------------------------------------------
    def forward(self, batch):
        z1, z2 = two_view_projections(self.encoder, self.projector, batch[0])
        labels = batch[1]
        clustered = self.clustered
        if (self.training or clustered) and len(batch) < 3:
            raise ValueError("sbcl: the batch carries no sample positions (views, labels, "
                             "positions); SBCL looks subclasses and its feature bank up by them")
        if self.training:
            self._remember(z1, z2, batch[2])
        context = global_batch(z1, z2, labels)
        if not clustered:  # warm-up
            if self.warmup_loss == "kcl":
                loss = kcl_loss(z1, z2, labels, self.k, self.tau1, **context)
            else:
                loss = supcon_loss(z1, z2, labels, self.tau1, **context)
        else:
            sub = self.subclass[batch[2].to(self.subclass.device).long()]
            loss = sbcl_loss(z1, z2, labels, sub, self.tau1, self.tau2, self.beta,
                             subclasses_all=gather(sub), **context)
        return {"loss": loss, "z_std": z_std(z1)}
