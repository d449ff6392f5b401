"""End-to-end fine-tuning on images (``finetune.mode: partial | full``): the encoder's last
``trainable_stages`` stages (or all of it) and a linear classifier, trained by the engine's one
loop (``engine.loop.fit``) with the ``supervised`` method; the frozen stages keep their weights
and their BatchNorm statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ltscale.errors import RecipeError


@dataclass
class EndToEndResult:
    method: nn.Module             # the supervised method: encoder + classifier, trained
    history: list[dict]           # the engine loop's per-epoch records
    trainable_parameters: int


def encoder_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder as an ordered list of stages, input first: the stem, then each resolution
    stage (torchvision ResNets: layer1…layer4; CIFAR ResNets: the blocks of one width)."""
    if all(hasattr(encoder, f"layer{i}") for i in range(1, 5)):  # torchvision ResNet
        stem = [m for m in (encoder.conv1, encoder.bn1) if m is not None]
        return [stem] + [[getattr(encoder, f"layer{i}")] for i in range(1, 5)]
    if hasattr(encoder, "layers") and hasattr(encoder, "conv1"):  # ltscale CifarResNet
        stages: list[list[nn.Module]] = [[encoder.conv1, encoder.bn1]]
        width = None
        for block in encoder.layers:
            out = block.conv2.out_channels
            if out != width:
                stages.append([])
                width = out
            stages[-1].append(block)
        return stages
    children = [m for m in encoder.children() if any(True for _ in m.parameters())]
    return [[m] for m in children]


def freeze_stages(encoder: nn.Module, trainable: int | None) -> list[nn.Module]:
    """Freeze all but the last ``trainable`` stages (None: train everything); returns the frozen
    modules (to be kept in eval mode)."""
    stages = encoder_stages(encoder)
    if trainable is None:
        return []
    if not 1 <= trainable <= len(stages):
        raise RecipeError(f"finetune.trainable_stages={trainable}, but the encoder has "
                          f"{len(stages)} stages (stem + {len(stages) - 1}); choose 1…"
                          f"{len(stages)} or finetune.mode=full")
    frozen = [m for stage in stages[:len(stages) - trainable] for m in stage]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


class PartiallyFrozen(nn.Module):
    """A method whose ``frozen`` modules stay in eval mode (BatchNorm statistics untouched) when
    the loop calls ``train()``; everything else is delegated."""

    def __init__(self, method: nn.Module, frozen: list[nn.Module]):
        super().__init__()
        self.method = method
        self._frozen = frozen  # a plain list: not registered twice in the state_dict
        self.views, self.uses_labels = method.views, method.uses_labels

    @property
    def encoder(self):
        return self.method.encoder

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def set_epoch(self, epoch: int, epochs: int) -> None:
        hook = getattr(self.method, "set_epoch", None)
        if hook is not None:
            hook(epoch, epochs)

    def logits(self, x):
        return self.method.logits(x)

    def forward(self, batch):
        return self.method(batch)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_end_to_end(ctx, encoder: nn.Module, *, name: str, stage_dir, seed: int
                   ) -> EndToEndResult:
    """Train encoder + classifier on the labeled images; returns the method (its ``encoder`` and
    ``classifier`` trained), the loop history and the number of trained parameters."""
    from ltscale.config.base import OptimCfg
    from ltscale.engine.loop import LoopConfig, fit
    from ltscale.engine.optim import build_optimizer
    from ltscale.methods import create_method
    from ltscale.stages.loaders import train_loader

    f = ctx.recipe.finetune
    torch.manual_seed(seed)
    method = create_method("supervised", encoder, num_classes=ctx.index.num_classes,
                           class_counts=ctx.manifest.class_counts().tolist(), loss=f.loss.name,
                           loss_options=f.loss.options())
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
