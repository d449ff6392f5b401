"""End-to-end fine-tuning stage (``finetune.mode: partial | full``): the encoder's last
``trainable_stages`` stages (or all of it) and a linear classifier, trained on the labeled images
by the engine's one loop (``engine.loop.fit``) with the ``supervised`` method; the frozen stages
keep their weights and their BatchNorm statistics (``finetune/endtoend.py``)."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.config.base import OptimCfg
from ltscale.core.errors import RecipeError
from ltscale.engine.loop import LoopConfig, fit
from ltscale.engine.optim import build_optimizer
from ltscale.finetune.endtoend import (
    EndToEndResult,
    PartiallyFrozen,
    freeze_stages,
    trainable_parameters,
)
from ltscale.methods import create_method
from ltscale.stages.loaders import train_loader


def run_end_to_end(ctx, encoder: nn.Module, *, name: str, stage_dir, seed: int, loss=None
                   ) -> EndToEndResult:
    """Train encoder + classifier on the labeled images with ``loss`` (a ``finetune.loss``
    section; None: the recipe's); returns the method (its ``encoder`` and ``classifier``
    trained), the loop history and the number of trained parameters."""
    f = ctx.recipe.finetune
    loss = loss or f.loss
    torch.manual_seed(seed)
    method = create_method("supervised", encoder, num_classes=ctx.index.num_classes,
                           class_counts=ctx.manifest.class_counts().tolist(), loss=loss.name,
                           loss_options=loss.options())
    frozen = freeze_stages(method.encoder, f.trainable_stages if f.mode == "partial" else None)
    model = PartiallyFrozen(method, frozen)
    loader, sampler = train_loader(ctx, augment=f.augment, batch_size=f.batch_size,
                                   workers=f.workers, seed=seed, epochs=f.epochs,
                                   balance=f.balance, roles=("labeled",))
    outputs = getattr(getattr(loader, "preset", None), "outputs", None)
    if outputs is not None and outputs != method.views:
        raise RecipeError(f"{name}: finetune.augment.preset {f.augment.preset!r} gives {outputs} "
                          f"views per image; end-to-end fine-tuning takes {method.views}")
    optim = OptimCfg(name=f.optimizer, lr=f.lr, scale_lr=False, weight_decay=f.weight_decay,
                     warmup_epochs=0, schedule="cosine")
    optimizer = build_optimizer([{"params": [p for p in model.parameters() if p.requires_grad]}],
                                optim, f.batch_size)
    cfg = LoopConfig(epochs=f.epochs, warmup_epochs=0, schedule="cosine",
                     max_steps_per_epoch=f.max_steps_per_epoch, progress=ctx.progress, desc=name)
    model.set_epoch(0, f.epochs)

    def on_epoch_end(epoch: int) -> dict:
        model.set_epoch(epoch + 1, f.epochs)  # DRW losses switch at their epoch
        return {}

    # no resumable checkpoint: a fine-tuning run is short and restarts from the encoder file
    state = fit(model, loader, sampler, optimizer, cfg, ctx.backend, ctx.tracker,
                checkpoint=None, on_epoch_end=on_epoch_end)
    ctx.backend.finish(model)  # the fp32 master weights from here on
    model.eval()
    return EndToEndResult(method=method, history=state.history,
                          trainable_parameters=trainable_parameters(model))
