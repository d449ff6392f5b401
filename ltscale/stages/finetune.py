"""Fine-tuning stage (``finetune.mode``):

* ``linear``: frozen encoder → feature cache → standardised linear classifier;
* ``proj_head``: frozen encoder → feature cache → the pretrained projector's first layer
  (Linear → BN → ReLU, trainable, initialised from pretraining) → new linear classifier
  (seed 000: "2 FC layers");
* ``last_fc``: that projector layer frozen; the cache holds its output, only the classifier is
  trained (seed 000 above 60 % noise);
* ``partial`` / ``full``: the encoder's last ``trainable_stages`` stages (or all of it) and a
  classifier trained end to end on images by the engine's loop; the fine-tuned encoder is written
  beside the head.

Then optionally ``classifier_stage`` (cRT, τ-normalisation, LWS) on the frozen features. The head
written to ``head.pt`` maps encoder features to logits (its projector layer included) and is
rebuilt by ``head_from_file``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ltscale.config.overrides import flatten
from ltscale.config.supervised import LossCfg
from ltscale.core.atomic import atomic_path
from ltscale.core.errors import CheckpointError, RecipeError
from ltscale.core.hashing import file_sha256
from ltscale.data.augment import eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.sampling import EpochSampler
from ltscale.finetune.cache import (
    FORMAT,
    FeatureCache,
    encode_share,
    is_cached,
    load_cache,
    module_sha256,
)
from ltscale.finetune.trainer import predict, superloss_confidence, train_head, transform
from ltscale.finetune.two_stage import apply_classifier_stage
from ltscale.losses import classification_loss
from ltscale.models.classifier import (
    ClassifierPart,
    Head,
    classifier_as_head,
    new_head,
    pretrained_projector_layer,
    projector_layer,
)
from ltscale.models.files import encoder_from_file_contents, read_encoder_file, write_head
from ltscale.stages.context import Context
from ltscale.stages.endtoend import run_end_to_end
from ltscale.stages.loaders import stage_loader, test_selection
from ltscale.stages.networks import save_encoder
from ltscale.stages.results import FinetuneResult

FROZEN_MODES = ("linear", "proj_head", "last_fc")
END_TO_END_MODES = ("partial", "full")
ENCODE_BATCH = 512


# --- loaders over one rank's share of a selection ------------------------------------------------

def _share_loader(ctx: Context, ids, labels, views, *, preset=None, evaluation=None,
                  workers: int, seed: int, batch_size: int = ENCODE_BATCH):
    """Each sample of ``ids`` once, in order, this rank's share only: (loader, positions)."""
    d = ctx.recipe.data
    ds = ManifestDataset(ctx.index, ids, labels, views, on_error=d.loader.on_error)
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=seed, shuffle="none",
                           tail="keep", rank=ctx.backend.rank, world_size=ctx.backend.world_size,
                           rows=ds.rows)
    return stage_loader(ctx, ds, sampler, workers, preset=preset, evaluation=evaluation), \
        sampler.rank_positions()


def _eval_key(ctx: Context) -> dict:
    d = ctx.recipe.data
    return {"image_size": d.image_size, "crop_fraction": d.eval_crop_fraction,
            "channels": d.channels, "mean": d.mean, "std": d.std}


def _ids_hash(ids, labels) -> str:
    h = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def cached_features(ctx: Context, model: nn.Module, root: Path, *, encoder_hash: str,
                    output: str, split: str = "train", aug_copies: int = 0,
                    desc: str = "encode") -> tuple[FeatureCache, bool]:
    """The cache of ``model``'s outputs over the training manifest's labeled samples
    (``split="train"``, with ``aug_copies`` augmented versions) or the test selection; built
    (this rank's share) unless a cache with the same key exists. Returns (cache, reused)."""
    f = ctx.recipe.finetune
    d = ctx.recipe.data
    spec = eval_spec(d.image_size, d.eval_crop_fraction)
    if split == "train":
        ids, labels = ctx.manifest.rows("labeled")
        selection = {"manifest": ctx.manifest.hash, "roles": ["labeled"]}
        split_name = ctx.manifest.header["spec"]["split"]
    else:
        split_name, ids, labels = test_selection(ctx)
        aug_copies = 0
        selection = {"split": split_name, "rows": _ids_hash(ids, labels)}
    key = {"format": FORMAT, "encoder": encoder_hash, "output": output, **selection,
           "aug_copies": aug_copies, "eval_transform": _eval_key(ctx),
           "augment": f.augment.model_dump() if aug_copies else None,
           "seed": ctx.recipe.seed if aug_copies else None}
    if is_cached(root, key):
        return load_cache(root, key), True
    loader, positions = _share_loader(ctx, ids, labels, EvalView(spec, d.channels),
                                      evaluation=spec, workers=f.workers, seed=ctx.recipe.seed)
    sources = [(loader, None)]
    if aug_copies:
        preset = make_preset(f.augment.preset, d.image_size, d.channels, **f.augment.options())
        if preset.outputs != 1:
            raise RecipeError(f"finetune.augment.preset {f.augment.preset!r} gives "
                              f"{preset.outputs} views per image; augmented cache copies need a "
                              "one-view preset (e.g. supervised_cifar)")
        aug, _ = _share_loader(ctx, ids, labels, TrainViews(preset, d.channels), preset=preset,
                               workers=f.workers, seed=ctx.recipe.seed)
        sources += [(aug, copy) for copy in range(aug_copies)]
    encode_share(model, sources, ctx.device, root, key, positions=positions,
                 rank=ctx.backend.rank, world_size=ctx.backend.world_size, desc=desc,
                 progress=ctx.progress)
    ctx.backend.barrier()  # every rank's share is written before anyone reads the cache
    return load_cache(root, key), False


# --- the encoder and its projector ---------------------------------------------------------------

def _encoder_and_projector(ctx: Context, encoder, encoder_path, need_projector: bool):
    """(encoder module, projector description or None, content hash, path or None)."""

    b = ctx.recipe.pretrain.backbone
    projector = None
    if isinstance(encoder, (str, Path)) or encoder_path is not None:
        encoder_path = Path(encoder if isinstance(encoder, (str, Path)) else encoder_path)
        saved = read_encoder_file(encoder_path, b.name if isinstance(encoder, (str, Path))
                                  else None, ctx.recipe.data.channels)  # read once
        if isinstance(encoder, (str, Path)):
            encoder = encoder_from_file_contents(saved, encoder_path)
        projector = saved.get("projector")
        digest = file_sha256(encoder_path)
        if need_projector and projector is None:
            raise CheckpointError(
                f"{encoder_path} has no projector (it was saved without one, e.g. by an older "
                f"ltscale or from a method without a projection head); finetune.mode="
                f"{ctx.recipe.finetune.mode} starts from the pretrained projector's first "
                "layer: re-run `ltscale pretrain`, or use finetune.mode=linear")
    else:
        digest = module_sha256(encoder)
        if need_projector:  # an encoder without a file (the random-encoder baseline): a
            torch.manual_seed(ctx.recipe.seed)  # freshly initialised projector layer
            p = ctx.recipe.pretrain.final_method
            layer = projector_layer(encoder.feat_dim, p.proj_dim)
            projector = {"dims": [encoder.feat_dim, p.proj_dim],
                         "state_dict": layer.state_dict(), "random": True}
    return encoder, projector, digest, encoder_path


def _classifier_input(head: Head, cache: FeatureCache, cached_projected: bool, device):
    """What the classifier sees for each cached version (the projector layer applied once)."""
    if head.projector is None or cached_projected:
        return cache.features
    return transform(head.projector, cache.features, device=device)


# --- the stage -----------------------------------------------------------------------------------

def _end_to_end(ctx: Context, encoder: nn.Module, name: str, stage_dir: Path, loss: LossCfg,
                metrics: dict) -> tuple[nn.Module, str, Head, Path, list[dict]]:
    """partial / full: train encoder + classifier on images, save the trained encoder. Returns
    (encoder, its file's digest, the classifier as a head, the encoder file, history)."""
    e2e = run_end_to_end(ctx, encoder, name=name, stage_dir=stage_dir, seed=ctx.recipe.seed,
                         loss=loss)
    method = e2e.method
    head_encoder = save_encoder(stage_dir / "encoder.pt", method.encoder, ctx).resolve()
    encoder = method.encoder.to(ctx.device).eval()
    head = classifier_as_head(method.classifier, encoder.feat_dim, ctx.index.num_classes,
                              method.classifier_kind)  # cosine for LDAM losses
    metrics["finetune/trainable_parameters"] = e2e.trainable_parameters
    last = e2e.history[-1] if e2e.history else {}
    history = [{"epoch": r["epoch"], "loss": r.get("epoch/loss"),
                "accuracy": r.get("epoch/acc"), "images": r.get("epoch/images", 0),
                "steps": r.get("epoch/steps", 0)} for r in e2e.history]
    if "epoch/loss" in last:
        metrics["finetune/final_loss"] = last["epoch/loss"]
    ctx.tracker.set_tags({"ltscale.finetuned_encoder": str(head_encoder)})
    return encoder, file_sha256(head_encoder), head, head_encoder, history


def _frozen_head(ctx: Context, in_dim: int, projector, train_cache, loss_fn, name: str,
                 train_kw: dict, metrics: dict) -> tuple[Head, list[dict]]:
    """linear / proj_head / last_fc: a head trained on the cached training features (for
    last_fc, on the cached projections, with only the classifier learning)."""
    f = ctx.recipe.finetune
    head = new_head(in_dim, ctx.index.num_classes, f.mode, projector=projector,
                    kind=loss_fn.classifier, seed=ctx.recipe.seed)
    head.fit_standardize(train_cache.features)
    common = dict(loss_fn=loss_fn, epochs=f.epochs, balance=f.balance, desc=f"{name} head",
                  **train_kw)
    if f.mode == "last_fc":
        for p in head.projector.parameters():
            p.requires_grad_(False)
        part, history = train_head(ClassifierPart(head), train_cache.features,
                                   train_cache.labels, **common)
        head = part.head
    else:
        head, history = train_head(head, train_cache.features, train_cache.labels, **common)
    metrics["finetune/final_loss"] = history[-1]["loss"]
    metrics["finetune/final_train_accuracy"] = history[-1]["accuracy"]
    metrics["finetune/trainable_parameters"] = sum(
        p.numel() for p in head.parameters() if p.requires_grad)
    return head, history


def _training_confidence(ctx: Context, head: Head, z_train, train_cache, loss_fn,
                         stage_dir: Path) -> np.ndarray | None:
    """σ* of the training samples (SuperLoss losses; None for the others), aligned with the
    manifest's labeled rows (NaN where no cached feature), saved as ``confidence.npy``."""
    sigma = superloss_confidence(ClassifierPart(head), z_train, train_cache.labels, loss_fn,
                                 device=ctx.device)
    if sigma is None:
        return None
    confidence = np.full(len(ctx.manifest.rows("labeled")[0]), np.nan, dtype=np.float32)
    confidence[train_cache.positions] = sigma
    if ctx.backend.is_main:
        with atomic_path(stage_dir / "confidence.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, confidence)
    return confidence


def _save_head(ctx: Context, path: Path, head: Head, head_encoder: Path | None,
               digest: str) -> None:
    """``head.pt``, written by rank 0 (every rank trained the same head on the same cache)."""
    f = ctx.recipe.finetune
    if ctx.backend.is_main:
        write_head(path, head, num_classes=ctx.index.num_classes, mode=f.mode,
                   classifier_stage=f.classifier_stage, encoder=head_encoder,
                   encoder_sha256=digest)


def run_finetune(ctx: Context, encoder, name: str = "finetune",
                 encoder_path: Path | None = None, cache_dir: Path | None = None,
                 loss: LossCfg | None = None) -> FinetuneResult:
    """Fine-tune from ``encoder``: an encoder file (``encoder.pt``) or a module (then
    ``encoder_path`` may name its file, which supplies the pretrained projector), with ``loss``
    (a ``finetune.loss`` section; None: the recipe's). The feature cache lives in ``cache_dir``
    (default ``<stage folder>/features``): heads that share an encoder may share it."""
    f = ctx.recipe.finetune
    loss = loss or f.loss
    mode, device = f.mode, ctx.device
    stage_dir = ctx.out / name
    cache_dir = stage_dir / "features" if cache_dir is None else cache_dir
    encoder, projector, digest, encoder_path = _encoder_and_projector(
        ctx, encoder, encoder_path, need_projector=mode in ("proj_head", "last_fc"))
    encoder = encoder.to(device)
    counts = ctx.manifest.class_counts().tolist()
    loss_fn = classification_loss(loss.name, counts, **loss.options())
    train_kw = dict(batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                    optimizer=f.optimizer, seed=ctx.recipe.seed, device=device,
                    tracker=ctx.tracker, progress=ctx.progress)
    timings = {"encode": 0.0, "head": 0.0, "end_to_end": 0.0}
    metrics: dict[str, float] = {}
    head_encoder = Path(encoder_path).resolve() if encoder_path else None

    cached_projected = mode == "last_fc"
    if mode in END_TO_END_MODES:
        t = time.perf_counter()
        encoder, digest, head, head_encoder, history = _end_to_end(ctx, encoder, name, stage_dir,
                                                                   loss, metrics)
        timings["end_to_end"] = time.perf_counter() - t

    # the feature cache: encoder outputs (or the frozen projector layer's, for last_fc)
    cache_model: nn.Module = encoder
    if cached_projected:
        cache_model = nn.Sequential(encoder, pretrained_projector_layer(projector).to(device))
    output = "encoder+projector.0" if cached_projected else "encoder"
    t = time.perf_counter()
    train_cache, reused = cached_features(
        ctx, cache_model, cache_dir / "train", encoder_hash=digest, output=output,
        aug_copies=f.aug_copies if mode in FROZEN_MODES else 0, desc=f"{name}: encode train")
    test_cache, _ = cached_features(ctx, cache_model,
                                    cache_dir / ctx.recipe.eval.split,
                                    encoder_hash=digest, output=output, split="test",
                                    desc=f"{name}: encode {ctx.recipe.eval.split}")
    timings["encode"] = time.perf_counter() - t
    metrics["finetune/cache_reused"] = float(reused)

    t = time.perf_counter()
    if mode in FROZEN_MODES:
        head, history = _frozen_head(ctx, encoder.feat_dim, projector, train_cache, loss_fn,
                                     name, train_kw, metrics)
    head.eval()
    z_train = _classifier_input(head, train_cache, cached_projected, device)
    confidence = _training_confidence(ctx, head, z_train, train_cache, loss_fn, stage_dir)

    # classifier re-balancing on the frozen features
    if f.classifier_stage != "none":
        stage_loss = classification_loss("ce", counts)
        head, stage_history = apply_classifier_stage(
            f.classifier_stage, head, z_train, train_cache.labels, loss_fn=stage_loss,
            epochs=f.crt_epochs, tau=f.tau_norm, **train_kw)
        if stage_history:
            metrics[f"{f.classifier_stage}/final_loss"] = stage_history[-1]["loss"]
        history = history + [dict(r, stage=f.classifier_stage) for r in stage_history]
    timings["head"] = time.perf_counter() - t

    head = head.cpu().eval()
    head_path = stage_dir / "head.pt"
    _save_head(ctx, head_path, head, head_encoder, digest)
    z_test = _classifier_input(head, test_cache, cached_projected, "cpu")
    logits = predict(ClassifierPart(head), z_test)
    ctx.tracker.set_tags({"ltscale.head": str(head_path.resolve()), "ltscale.finetune_mode": mode,
                          "ltscale.classifier_stage": f.classifier_stage})
    ctx.tracker.log_params(flatten({"finetune": f.model_copy(update={"loss": loss}).model_dump()}))
    ctx.tracker.log_metrics({f"finetune/{k}_seconds": v for k, v in timings.items()} | metrics)
    return FinetuneResult(head=head_path, logits=logits,
                          targets=torch.from_numpy(test_cache.labels), history=history,
                          mode=mode, encoder=head_encoder, confidence=confidence,
                          seconds=sum(timings.values()), timings=timings, test_cache=test_cache)
