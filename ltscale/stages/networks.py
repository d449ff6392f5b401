"""The networks a stage makes, writes and predicts with, for the run context: a fresh encoder as
the recipe builds it, the encoder file (rank 0 writes, the others wait) and an end-to-end model's
logits on the evaluation split. The file formats themselves are ``models/files.py``'s."""

from __future__ import annotations

from pathlib import Path

import torch

from ltscale.models import create_backbone
from ltscale.models.files import write_encoder
from ltscale.stages.context import Context
from ltscale.stages.loaders import test_loader


def new_encoder(ctx: Context, seed: int | None = None, backbone=None) -> torch.nn.Module:
    """A freshly initialised encoder: ``backbone`` (a ``BackboneCfg``; None: the recipe's
    ``pretrain.backbone``), seeded with ``seed`` (None: the recipe's)."""
    torch.manual_seed(ctx.recipe.seed if seed is None else seed)
    b = backbone or ctx.recipe.pretrain.backbone
    return create_backbone(b.name, in_chans=ctx.recipe.data.channels, cifar_stem=b.cifar_stem)


def save_encoder(path: Path, encoder: torch.nn.Module, ctx: Context,
                 projector: torch.nn.Module | None = None, backbone=None) -> Path:
    """The encoder file (``models/files.py``) of ``encoder`` (or of a method and its projector),
    built as ``backbone`` (default: the recipe's ``pretrain.backbone``) for the recipe's
    channels; rank 0 writes it (every rank holds the same weights), the others wait."""
    b = backbone or ctx.recipe.pretrain.backbone
    if ctx.backend.is_main:
        write_encoder(path, encoder, backbone=b.name, cifar_stem=b.cifar_stem,
                      in_chans=ctx.recipe.data.channels, projector=projector)
    ctx.backend.barrier()
    return path


@torch.no_grad()
def predict_images(ctx: Context, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of an end-to-end classifier (a module with ``logits``: the scratch
    baseline, a self-training student or teacher) on the evaluation split."""
    model.eval()
    outs, ys = [], []
    for x, y, _ in test_loader(ctx, workers=ctx.recipe.finetune.workers):
        outs.append(model.logits(x.to(ctx.device)).float().cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)
