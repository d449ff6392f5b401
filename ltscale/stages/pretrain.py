"""The pretraining stage (and the supervised from-scratch baseline, through the same loop)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time

import numpy as np
import torch

from ltscale.config.overrides import flatten
from ltscale.core.errors import RecipeError
from ltscale.engine.checkpoint import latest_checkpoint
from ltscale.engine.knn import KnnMonitor
from ltscale.engine.loop import LoopConfig, fit
from ltscale.engine.optim import build_optimizer
from ltscale.methods import METHOD_INPUTS, create_method, method_class
from ltscale.methods.probe import OnlineProbe
from ltscale.stages.budget import measured, pipeline_plan, scratch_epochs
from ltscale.stages.context import Context
from ltscale.stages.fingerprint import VOLATILE, digest, loop_fingerprint
from ltscale.stages.loaders import knn_loaders, train_loader
from ltscale.stages.networks import new_encoder, save_encoder
from ltscale.stages.results import Budget, TrainResult

logger = logging.getLogger(__name__)


def _train(ctx: Context, method, *, name: str, epochs: int, batch_size: int, workers: int,
           optim_cfg, augment, balance: str, max_steps: int | None, monitor: bool,
           settings: dict, backbone=None) -> TrainResult:
    roles = training_roles(method)
    loader, sampler = train_loader(ctx, augment=augment, batch_size=batch_size, workers=workers,
                                   seed=ctx.recipe.seed, epochs=epochs, balance=balance,
                                   roles=roles)
    outputs = getattr(getattr(loader, "preset", None), "outputs", None)
    if outputs is not None and outputs != method.views:
        raise RecipeError(f"{name}: augmentation preset {augment.preset!r} gives {outputs} "
                          f"view(s) per image but method {type(method).__name__} takes "
                          f"{method.views}; set {name}.augment.preset or .views")
    optimizer = build_optimizer(method.param_groups(), optim_cfg, batch_size)
    on_epoch_end = None
    if monitor and ctx.recipe.pretrain.knn.enabled:
        knn = ctx.recipe.pretrain.knn
        monitor_fn = None
        if ctx.backend.is_main:  # rank 0 scores
            bank, queries = knn_loaders(ctx)
            monitor_fn = KnnMonitor(bank, queries, ctx.index.num_classes, ctx.device, knn.k,
                                    knn.temperature)
            ctx.tracker.log_metrics({"knn/top1": monitor_fn(method.encoder.to(ctx.device))},
                                    step=0)
        last = epochs - 1

        def on_epoch_end(epoch: int) -> dict:
            if (epoch + 1) % knn.every and epoch != last:
                return {}
            # every rank enters: a sharded backend gathers the fp32 master weights
            with ctx.backend.fp32_weights(method) as module:
                return {"knn/top1": monitor_fn(module.encoder)} if monitor_fn else {}
    stage_dir = ctx.out / name
    cfg = LoopConfig(epochs=epochs, warmup_epochs=optim_cfg.warmup_for(epochs),
                     schedule=optim_cfg.schedule, max_steps_per_epoch=max_steps,
                     accumulate=settings.get("accumulate", 1),
                     checkpoint_every=settings.get("checkpoint_every", 0),
                     keep=settings.get("keep_checkpoints", 2), progress=ctx.progress, desc=name)
    t0 = time.perf_counter()
    state = fit(method, loader, sampler, optimizer, cfg, ctx.backend, ctx.tracker,
                checkpoint=stage_dir / "checkpoint.pt", on_epoch_end=on_epoch_end,
                fingerprint=loop_fingerprint(ctx, settings))
    ctx.backend.finish(method)  # fp32 master weights for the export and the next stage
    encoder_path = save_encoder(stage_dir / "encoder.pt", method, ctx,  # + its projector
                                backbone=backbone)
    seconds = time.perf_counter() - t0
    return TrainResult(method=method, history=state.history, seconds=seconds,
                       encoder=encoder_path,
                       checkpoint=latest_checkpoint(stage_dir / "checkpoint.pt"),
                       budget=measured(state.history, seconds))


def label_free_key(ctx: Context) -> str | None:
    """A key that is equal for two runs whose pretraining must give the same encoder although
    their labels differ (e.g. sweep points that differ only in label noise), or None when the
    pretraining reads labels (a label-aware method, class-balanced sampling, the online probe).

    It covers the images trained on (the manifest's ids in order), the seed, the data, engine and
    pretraining settings; not the loader workers, checkpoint cadence or kNN monitor."""
    p = ctx.recipe.pretrain
    for stage in p.resolved_stages():
        cls = method_class(stage.method.name)
        if cls.uses_labels or {"labels", "class_counts"} & set(cls.needs):
            return None
        if stage.balance != "instance":
            return None
    if p.online_probe:
        return None
    ids, _ = ctx.manifest.rows("labeled", "unlabeled")
    settings = p.model_dump(exclude=VOLATILE)
    return digest(hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest(),
                  ctx.manifest.header["index_hash"], ctx.recipe.seed, ctx.recipe.data.model_dump(),
                  ctx.recipe.engine.model_dump(), settings)


def training_roles(method) -> tuple[str, ...]:
    """The manifest roles a method trains on: labeled only when it uses labels."""
    return ("labeled",) if method.uses_labels else ("labeled", "unlabeled")


def method_inputs(ctx: Context, name: str) -> dict:
    """The facts about its training set that method ``name`` declares in ``needs``."""
    cls = method_class(name)
    needs = tuple(cls.needs)
    unknown = [n for n in needs if n not in METHOD_INPUTS]
    if unknown:
        raise RecipeError(f"method {name} needs {unknown}, which the pretraining stage does not "
                          f"provide (it provides {', '.join(METHOD_INPUTS)})")
    _, labels = ctx.manifest.rows(*training_roles(cls))
    available = {"num_classes": ctx.index.num_classes,
                 "class_counts": ctx.manifest.class_counts().tolist(),
                 "labels": labels.copy(), "num_samples": len(labels)}
    return {n: available[n] for n in needs}


def build_method(ctx: Context, cfg, encoder: torch.nn.Module):
    """The method of ``cfg`` (a MethodCfg) around ``encoder``, with the inputs it declares."""
    opts = cfg.model_dump(exclude={"name"})
    return create_method(cfg.name, encoder, **opts, **method_inputs(ctx, cfg.name))


def _unwrap(method):
    """The method inside an online probe."""
    return method.method if isinstance(method, OnlineProbe) else method


def _start_from(ctx: Context, method, previous, stage: str) -> None:
    """Stage ``stage`` starts from the previous stage's method: its encoder weights, then what
    the new method takes over itself (``init_from``, e.g. FASSL's prototypes)."""
    new, old = _unwrap(method), _unwrap(previous)
    new.encoder.load_state_dict(old.encoder.state_dict())
    new.init_from(old)
    logger.info(f"pretrain/{stage}: starts from the previous stage's {type(old).__name__}")


def run_pretrain(ctx: Context) -> TrainResult:
    """Every pretraining stage in order (one unless ``pretrain.stages``); the last one's encoder
    is the result. Each stage of several is a nested MLflow run and folder ``pretrain/<name>``,
    and resumes from its own checkpoints."""
    p = ctx.recipe.pretrain
    stages = p.resolved_stages()
    ctx.tracker.log_params(flatten({"pretrain": p.model_dump(), "manifest":
                                    ctx.recipe.manifest.model_dump()}))
    common = p.model_dump(exclude={"stages", "method"})
    previous, chain, result, budget = None, [], None, Budget()
    for i, stage in enumerate(stages):
        method = build_method(ctx, stage.method, new_encoder(ctx))
        if p.online_probe:
            method = OnlineProbe(method, ctx.index.num_classes)
        if previous is not None:
            _start_from(ctx, method, previous, stage.name)
        # a stage's checkpoints belong to it and to the stages before it
        settings = common | stage.model_dump() | {"after": list(chain)}
        name = "pretrain" if len(stages) == 1 else f"pretrain/{stage.name}"
        run = (ctx.tracker.run(name, nested=True, tags={"ltscale.stage": "pretrain",
                                                        "ltscale.pretrain_stage": stage.name})
               if len(stages) > 1 else contextlib.nullcontext())
        with run:
            if len(stages) > 1:
                ctx.tracker.log_params(flatten({"stage": stage.model_dump(), "index": i}))
            result = _train(ctx, method, name=name, epochs=stage.epochs,
                            batch_size=stage.batch_size, workers=p.workers,
                            optim_cfg=stage.optim, augment=stage.augment,
                            balance=stage.balance, max_steps=stage.max_steps_per_epoch,
                            monitor=True, settings=settings)
            ctx.tracker.log_metrics({"pretrain/seconds": result.seconds})
        chain.append(stage.model_dump())
        previous, budget = result.method, budget + result.budget
    ctx.tracker.set_tags({"ltscale.encoder": str(result.encoder.resolve()),
                          "ltscale.checkpoint": str(result.checkpoint.resolve())})
    ctx.tracker.log_metrics(budget.as_metrics())
    return dataclasses.replace(result, budget=budget)  # the encoder cost every stage


def scratch_stage(ctx: Context, loss: str | None = None) -> str:
    """The folder (and MLflow stage) of the from-scratch network with ``loss``: ``ce_scratch``
    for the section's own loss, ``scratch_<loss>`` for each of its ``extra_losses``."""
    s = ctx.recipe.baselines.ce_scratch
    return "ce_scratch" if loss in (None, s.loss.name) else f"scratch_{loss}"


def run_scratch(ctx: Context, loss: str | None = None) -> TrainResult:
    """Encoder + linear classifier trained end to end on the observed labels, with
    ``baselines.ce_scratch``'s loss or, naming one of its ``extra_losses``, that loss (with the
    section's other loss options)."""
    s = ctx.recipe.baselines.ce_scratch
    epochs = scratch_epochs(ctx)  # budget: match → the pipeline's images
    backbone = s.backbone or ctx.recipe.pretrain.backbone
    s = s.model_copy(update={"loss": s.loss.model_copy(update={"name": loss or s.loss.name}),
                             "extra_losses": [], "epochs": epochs, "backbone": backbone})
    method = create_method("supervised", new_encoder(ctx, backbone=backbone),
                           num_classes=ctx.index.num_classes,
                           class_counts=ctx.manifest.class_counts().tolist(), loss=s.loss.name,
                           loss_options=s.loss.options())
    ctx.tracker.log_params(flatten({"ce_scratch": s.model_dump()}))
    if s.budget == "match":
        logger.info(f"{scratch_stage(ctx, loss)}: budget match → {epochs} epochs "
                    f"({pipeline_plan(ctx).images} images in pretraining + fine-tuning)")
    # the extra losses are not part of one network's settings: its checkpoints resume alone
    return _train(ctx, method, name=scratch_stage(ctx, loss), epochs=epochs,
                  batch_size=s.batch_size, workers=ctx.recipe.pretrain.workers,
                  optim_cfg=s.optim, augment=s.augment, balance=s.balance,
                  max_steps=s.max_steps_per_epoch, monitor=False,
                  settings=s.model_dump(exclude={"extra_losses"}), backbone=backbone)
