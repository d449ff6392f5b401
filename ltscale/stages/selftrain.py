"""The self-training stage (``selftrain:``; Yang & Xu 2020, §2): the teacher (the pipeline's
fine-tuned model or the CE-from-scratch baseline) pseudo-labels the manifest's unlabeled pool,
then a student — encoder + classifier, from scratch or from the pretrained encoder — is trained
end to end by the engine's loop on D_L ∪ pseudo-labelled D_U, the pseudo-labelled samples' loss
weighted by ω (the ``supervised`` method's ``sample_weights``). The student is evaluated like every
other model; the pseudo-labels (``pseudo_labels.npz``), the student's encoder and head are written
to ``<output_dir>/selftrain/``."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ltscale.config.overrides import flatten
from ltscale.core.atomic import atomic_path
from ltscale.core.errors import RecipeError
from ltscale.core.hashing import file_sha256
from ltscale.data.augment import eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.sampling import EpochSampler
from ltscale.engine.loop import LoopConfig, fit
from ltscale.engine.optim import build_optimizer
from ltscale.finetune.selftrain import (
    UNLABELED,
    PseudoLabels,
    TrainingSet,
    assign_pseudo_labels,
    combined_training_set,
    pseudo_label_metrics,
    teacher_logits,
    unlabeled_rows,
)
from ltscale.methods import create_method
from ltscale.models.classifier import Head, head_spec
from ltscale.models.files import head_from_file, load_encoder, write_head
from ltscale.stages.budget import measured
from ltscale.stages.context import Context
from ltscale.stages.finetune import predict_images
from ltscale.stages.loaders import stage_loader
from ltscale.stages.pretrain import (
    engine_fingerprint,
    new_encoder,
    run_scratch,
    save_encoder,
)
from ltscale.stages.results import Budget, FinetuneResult, SelfTrainResult, TrainResult

logger = logging.getLogger(__name__)

NAME = "selftrain"


def pseudo_label_pool(ctx, teacher: torch.nn.Module, threshold: float = 0.0, *,
                      workers: int = 0, batch_size: int = 512) -> PseudoLabels:
    """Pseudo-label the context's D_U with ``teacher`` (its predictions only): every row is
    read once, without augmentation, with label −1."""
    d = ctx.recipe.data
    rows = unlabeled_rows(ctx.manifest)
    spec = eval_spec(d.image_size, d.eval_crop_fraction)
    hidden = np.full(len(rows), UNLABELED, dtype=np.int64)  # never the true labels
    ds = ManifestDataset(ctx.index, rows, hidden, EvalView(spec, d.channels),
                         on_error=d.loader.on_error)
    sampler = EpochSampler(len(ds), batch_size=batch_size, shuffle="none", tail="keep",
                           rows=ds.rows)
    loader = stage_loader(ctx, ds, sampler, workers, evaluation=spec)
    logits, positions = teacher_logits(teacher.to(ctx.device), loader, ctx.device)
    _, predicted, confidence = assign_pseudo_labels(logits, threshold)
    out_pred = np.full(len(rows), UNLABELED, dtype=np.int64)  # a skipped (unreadable) row
    out_conf = np.zeros(len(rows), dtype=np.float32)
    out_pred[positions], out_conf[positions] = predicted, confidence
    return PseudoLabels(rows=rows, predicted=out_pred, confidence=out_conf,
                        threshold=float(threshold))



class EncoderHead(nn.Module):
    """A fine-tuned model as one module: ``logits(x) = head(encoder(x))``."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def logits(self, x):
        return self.head(self.encoder(x))

    forward = logits


def check_pool(ctx: Context) -> None:
    """Refuse, before any training, a self-training recipe whose manifest has no D_U."""
    if ctx.recipe.selftrain.enabled:
        unlabeled_rows(ctx.manifest)


def teacher_model(ctx: Context, finetuned: FinetuneResult | None,
                  scratch: TrainResult | None, finetuned_budget: Budget | None = None
                  ) -> tuple[nn.Module, str, Budget]:
    """(teacher, its name in the report, what training it cost) as ``selftrain.teacher`` says.
    A ``ce_scratch`` teacher is trained here when the pipeline's baseline did not run.
    ``finetuned_budget``: the fine-tuned teacher's cost with its pretraining (the pipeline knows
    it); without it, the fine-tuning's alone."""
    r = ctx.recipe
    if r.selftrain.teacher == "finetune":
        if finetuned is None or finetuned.encoder is None:
            raise RecipeError("selftrain.teacher=finetune needs the fine-tuning stage's encoder "
                              "file and head; use selftrain.teacher=ce_scratch otherwise")
        encoder = load_encoder(finetuned.encoder, in_chans=r.data.channels)
        head = head_from_file(finetuned.head, ctx.index.num_classes)
        cost = finetuned_budget or measured(finetuned.history, finetuned.seconds)
        return EncoderHead(encoder, head), \
            f"{r.pretrain.final_method.name} + {r.finetune.loss.name}", cost
    if scratch is None:
        scratch = run_scratch(ctx)
    return scratch.method, f"scratch + {r.baselines.ce_scratch.loss.name}", scratch.budget


def student_loader(ctx: Context, train_set: TrainingSet):
    """Augmented batches of the student's training set; returns (loader, sampler)."""
    s, d = ctx.recipe.selftrain, ctx.recipe.data
    preset = make_preset(s.augment.preset, d.image_size, d.channels, **s.augment.options())
    if preset.outputs != 1:
        raise RecipeError(f"selftrain.augment.preset {s.augment.preset!r} gives {preset.outputs} "
                          "views per image; the student takes one (e.g. supervised_cifar)")
    ds = ManifestDataset(ctx.index, train_set.rows, train_set.labels,
                         TrainViews(preset, d.channels), on_error=d.loader.on_error)
    sampler = EpochSampler(len(ds), batch_size=s.batch_size, seed=ctx.recipe.seed, tail="drop",
                           rank=ctx.backend.rank, world_size=ctx.backend.world_size,
                           balance=s.balance, labels=ds.labels, epochs=s.epochs, rows=ds.rows,
                           shuffle=d.loader.shuffle, block_size=d.loader.block_size,
                           window=d.loader.window)
    return stage_loader(ctx, ds, sampler, s.workers, preset=preset), sampler


def _fingerprint(ctx: Context, train_set: TrainingSet, init: str) -> str:
    """What a student checkpoint must share with this run to be resumed: manifest, seed, data,
    settings (the loader workers may change), the engine's precision, the training set with its
    pseudo-labels and weights, and the initial encoder."""
    s = ctx.recipe.selftrain.model_dump(exclude={"workers"}) | engine_fingerprint(ctx)
    h = hashlib.sha256()
    for a in (train_set.rows, train_set.labels, train_set.weights):
        h.update(np.ascontiguousarray(a).tobytes())
    blob = json.dumps([ctx.manifest.hash, ctx.recipe.seed, ctx.recipe.data.model_dump(), s,
                       h.hexdigest(), init], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_head(path: Path, method, encoder_path: Path, ctx: Context) -> None:
    """The student's classifier as a head file ``ltscale eval --from`` reads."""
    kind = method.classifier_kind
    head = Head(head_spec(method.encoder.feat_dim, ctx.index.num_classes, standardize=False,
                          kind=kind, bias=kind == "linear"))
    head.classifier.load_state_dict(method.classifier.state_dict())
    if ctx.backend.is_main:
        write_head(path, head, num_classes=ctx.index.num_classes, mode="full",
                   classifier_stage="none", encoder=encoder_path)


def run_selftrain(ctx: Context, finetuned: FinetuneResult | None = None,
                  pretrained: Path | None = None, scratch: TrainResult | None = None,
                  finetuned_budget: Budget | None = None) -> SelfTrainResult:
    """Pseudo-label D_U with the teacher, train the student on D_L ∪ D_U, predict the test set.

    ``finetuned``: the fine-tuning stage's result (its ``encoder`` file and ``head``);
    ``pretrained``: the pretrain stage's encoder file (``selftrain.init: pretrained``);
    ``scratch``: the CE-from-scratch baseline's result, when it ran; ``finetuned_budget``: what
    the fine-tuned teacher cost, pretraining included. The result's budget is the teacher's plus
    the student's."""
    s, r = ctx.recipe.selftrain, ctx.recipe
    stage_dir = ctx.out / NAME
    ctx.tracker.log_params(flatten({"selftrain": s.model_dump()}))
    timings = {}

    t = time.perf_counter()
    teacher, teacher_name, teacher_cost = teacher_model(ctx, finetuned, scratch,
                                                        finetuned_budget)
    pseudo = pseudo_label_pool(ctx, teacher, s.threshold, workers=s.workers)
    metrics = pseudo_label_metrics(pseudo, ctx.manifest)
    if ctx.backend.is_main:
        with atomic_path(stage_dir / "pseudo_labels.npz") as tmp:
            with open(tmp, "wb") as fh:
                pseudo.save(fh)
        ctx.tracker.log_artifact(stage_dir / "pseudo_labels.npz")
    timings["pseudo_label"] = time.perf_counter() - t
    logger.info(f"{NAME}: teacher {teacher_name} pseudo-labelled {int(metrics['selftrain/kept'])} of "
            f"{len(pseudo.rows)} unlabeled images"
            + (f", accuracy {metrics['selftrain/pseudo_accuracy']:.3f} on known clean labels"
               if "selftrain/pseudo_accuracy" in metrics else ""))

    t = time.perf_counter()
    train_set = combined_training_set(ctx.manifest, pseudo, s.weight)
    if s.init == "pretrained":
        if pretrained is None:
            raise RecipeError("selftrain.init=pretrained needs the pretrain stage's encoder")
        encoder = load_encoder(pretrained, r.pretrain.backbone.name, r.data.channels)
        init = file_sha256(pretrained)
    else:
        encoder, init = new_encoder(ctx), f"scratch:{r.seed}"
    torch.manual_seed(r.seed)
    method = create_method("supervised", encoder, num_classes=ctx.index.num_classes,
                           class_counts=train_set.class_counts(ctx.index.num_classes).tolist(),
                           loss=s.loss.name, loss_options=s.loss.options(),
                           sample_weights=train_set.weights)
    loader, sampler = student_loader(ctx, train_set)
    optimizer = build_optimizer([{"params": list(method.parameters())}], s.optim, s.batch_size)
    cfg = LoopConfig(epochs=s.epochs, warmup_epochs=s.optim.warmup_for(s.epochs),
                     schedule=s.optim.schedule, max_steps_per_epoch=s.max_steps_per_epoch,
                     progress=ctx.progress, desc=NAME)
    state = fit(method, loader, sampler, optimizer, cfg, ctx.backend, ctx.tracker,
                checkpoint=stage_dir / "checkpoint.pt",
                fingerprint=_fingerprint(ctx, train_set, init))
    timings["student"] = time.perf_counter() - t
    ctx.backend.finish(method)  # the fp32 master weights from here on
    encoder_path = save_encoder(stage_dir / "encoder.pt", method.encoder, ctx).resolve()
    _save_head(stage_dir / "head.pt", method, encoder_path, ctx)
    logits, targets = predict_images(ctx, method)

    metrics |= {"selftrain/train_samples": float(len(train_set.rows)),
                "selftrain/pseudo_samples": float(train_set.pseudo.sum())}
    metrics |= {f"selftrain/{k}_seconds": v for k, v in timings.items()}
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.set_tags({"ltscale.teacher": teacher_name,
                          "ltscale.encoder": str(encoder_path),
                          "ltscale.head": str((stage_dir / "head.pt").resolve())})
    threshold = f", p ≥ {s.threshold:g}" if s.threshold > 0 else ""
    name = (f"self-training student ({teacher_name} teacher{threshold}, ω = {s.weight:g}, "
            f"{s.init}, {s.loss.name})")
    return SelfTrainResult(name=name, logits=logits, targets=targets, method=method,
                           teacher=teacher_name, pseudo=pseudo, train_set=train_set,
                           metrics=metrics, history=state.history,
                           budget=teacher_cost + measured(state.history, timings["student"]))
