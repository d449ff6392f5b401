"""The self-training stage (``selftrain:``; Yang & Xu 2020, §2): the teacher (the pipeline's
fine-tuned model or the CE-from-scratch baseline) pseudo-labels the manifest's unlabeled pool,
then a student — encoder + classifier, from scratch or from the pretrained encoder — is trained
end to end by the engine's loop on D_L ∪ pseudo-labelled D_U, the pseudo-labelled samples' loss
weighted by ω (the ``supervised`` method's ``sample_weights``). The student is evaluated like every
other model; the pseudo-labels (``pseudo_labels.npz``), the student's encoder and head are written
to ``<output_dir>/selftrain/``."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

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
from ltscale.models.classifier import EncoderHead, classifier_as_head
from ltscale.models.files import head_from_file, load_encoder, write_head
from ltscale.stages.budget import measured
from ltscale.stages.context import Context
from ltscale.stages.fingerprint import digest, engine_fingerprint
from ltscale.stages.loaders import stage_loader
from ltscale.stages.networks import new_encoder, predict_images, save_encoder
from ltscale.stages.results import (
    Budget,
    FinetuneResult,
    SelfTrainResult,
    Teacher,
    TrainResult,
)

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


def check_pool(ctx: Context) -> None:
    """Refuse, before any training, a self-training recipe whose manifest has no D_U."""
    if ctx.recipe.selftrain.enabled:
        unlabeled_rows(ctx.manifest)


def finetuned_teacher(ctx: Context, finetuned: FinetuneResult, budget: Budget | None = None
                      ) -> Teacher:
    """The fine-tuning stage's model (its encoder file and head) as the teacher; ``budget``:
    its cost with its pretraining (the pipeline knows it), else the fine-tuning's alone."""
    r = ctx.recipe
    if finetuned.encoder is None:
        raise RecipeError("selftrain.teacher=finetune needs the fine-tuning stage's encoder "
                          "file and head; use selftrain.teacher=ce_scratch otherwise")
    encoder = load_encoder(finetuned.encoder, in_chans=r.data.channels)
    head = head_from_file(finetuned.head, ctx.index.num_classes)
    return Teacher(EncoderHead(encoder, head),
                   f"{r.pretrain.final_method.name} + {r.finetune.loss.name}",
                   budget or measured(finetuned.history, finetuned.seconds))


def scratch_teacher(ctx: Context, scratch: TrainResult) -> Teacher:
    """The from-scratch baseline's network as the teacher."""
    return Teacher(scratch.method, f"scratch + {ctx.recipe.baselines.ce_scratch.loss.name}",
                   scratch.budget)


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
    return digest(ctx.manifest.hash, ctx.recipe.seed, ctx.recipe.data.model_dump(), s,
                  h.hexdigest(), init)


def _save_head(path: Path, method, encoder_path: Path, ctx: Context) -> None:
    """The student's classifier as a head file ``ltscale eval --from`` reads."""
    head = classifier_as_head(method.classifier, method.encoder.feat_dim, ctx.index.num_classes,
                              method.classifier_kind)
    if ctx.backend.is_main:
        write_head(path, head, num_classes=ctx.index.num_classes, mode="full",
                   classifier_stage="none", encoder=encoder_path)


def run_selftrain(ctx: Context, teacher: Teacher, pretrained: Path | None = None
                  ) -> SelfTrainResult:
    """Pseudo-label D_U with ``teacher``, train the student on D_L ∪ D_U, predict the test set.

    ``pretrained``: the pretrain stage's encoder file (``selftrain.init: pretrained``). The
    result's budget is the teacher's plus the student's."""
    s, r = ctx.recipe.selftrain, ctx.recipe
    stage_dir = ctx.out / NAME
    ctx.tracker.log_params(flatten({"selftrain": s.model_dump()}))
    timings = {}

    t = time.perf_counter()
    pseudo = pseudo_label_pool(ctx, teacher.model, s.threshold, workers=s.workers)
    metrics = pseudo_label_metrics(pseudo, ctx.manifest)
    if ctx.backend.is_main:
        with atomic_path(stage_dir / "pseudo_labels.npz") as tmp:
            with open(tmp, "wb") as fh:
                pseudo.save(fh)
        ctx.tracker.log_artifact(stage_dir / "pseudo_labels.npz")
    timings["pseudo_label"] = time.perf_counter() - t
    logger.info(f"{NAME}: teacher {teacher.name} pseudo-labelled "
                f"{int(metrics['selftrain/kept'])} of {len(pseudo.rows)} unlabeled images"
                + (f", accuracy {metrics['selftrain/pseudo_accuracy']:.3f} on known clean "
                   "labels" if "selftrain/pseudo_accuracy" in metrics else ""))

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
    ctx.tracker.set_tags({"ltscale.teacher": teacher.name,
                          "ltscale.encoder": str(encoder_path),
                          "ltscale.head": str((stage_dir / "head.pt").resolve())})
    threshold = f", p ≥ {s.threshold:g}" if s.threshold > 0 else ""
    name = (f"self-training student ({teacher.name} teacher{threshold}, ω = {s.weight:g}, "
            f"{s.init}, {s.loss.name})")
    return SelfTrainResult(name=name, logits=logits, targets=targets, method=method,
                           teacher=teacher.name, pseudo=pseudo, train_set=train_set,
                           metrics=metrics, history=state.history,
                           budget=teacher.budget + measured(state.history, timings["student"]))
