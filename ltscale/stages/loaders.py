"""Loaders the stages share, built from the recipe: one sampler, one backend, one preset."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ltscale.data.augment import eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset, balanced_rows
from ltscale.data.loading import LoaderSettings, build_loader
from ltscale.data.sampling import EpochSampler
from ltscale.data.verify import check_shards
from ltscale.engine import preempt
from ltscale.stages.context import Context


def settings(ctx: Context, workers: int) -> LoaderSettings:
    c = ctx.recipe.data.loader
    return LoaderSettings(backend=c.backend, decode=c.decode, workers=workers,
                          prefetch=c.prefetch, pin_memory=c.pin_memory, on_error=c.on_error,
                          urls=c.urls, shuffle_buffer=c.shuffle_buffer)


def stage_loader(ctx: Context, dataset, sampler, workers: int, preset=None, evaluation=None):
    """The recipe's loader backend over ``dataset`` in ``sampler`` order, shards checked first."""
    d = ctx.recipe.data
    if not (d.loader.backend == "stream" and d.loader.urls):  # remote shards: nothing local
        check_shards(ctx.index, dataset.rows, d.loader.check)
    loader = build_loader(dataset, sampler, settings(ctx, workers), device=ctx.device,
                          mean=d.mean, std=d.std, preset=preset, eval_spec=evaluation,
                          channels=d.channels)
    quiet_workers(loader)
    return loader


def quiet_workers(loader) -> None:
    """A torch DataLoader behind ``loader`` starts its workers with ``preempt.quiet_worker``: a
    signal to the process group is handled by the main process alone (its MLflow runs end
    KILLED, exit 143/130), without a worker's traceback."""
    inner = getattr(loader, "loader", None)
    if isinstance(inner, torch.utils.data.DataLoader) and inner.num_workers > 0:
        inner.worker_init_fn = functools.partial(preempt.quiet_worker,
                                                 then=inner.worker_init_fn)


def train_loader(ctx: Context, *, augment, batch_size: int, workers: int, seed: int,
                 epochs: int, balance: str = "instance", roles: tuple[str, ...] = ("labeled",)):
    """Augmented batches of the manifest's ``roles``; returns (loader, sampler)."""
    d = ctx.recipe.data
    preset = make_preset(augment.preset, d.image_size, d.channels, **augment.options())
    ds = ManifestDataset.from_manifest(ctx.index, ctx.manifest, TrainViews(preset, d.channels),
                                       roles=roles, on_error=d.loader.on_error)
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=seed, tail="drop",
                           rank=ctx.backend.rank, world_size=ctx.backend.world_size,
                           balance=balance, labels=ds.labels, epochs=epochs, rows=ds.rows,
                           shuffle=d.loader.shuffle, block_size=d.loader.block_size,
                           window=d.loader.window)
    return stage_loader(ctx, ds, sampler, workers, preset=preset), sampler


def eval_loader(ctx: Context, split: str, rows=None, *, labels=None, batch_size: int = 512,
                workers: int = 0):
    """Deterministic views of ``rows`` of ``split`` (all of it by default), each once, in order."""
    d = ctx.recipe.data
    spec = eval_spec(d.image_size, d.eval_crop_fraction)
    ds = ManifestDataset.from_split(ctx.index, split, EvalView(spec, d.channels), rows=rows,
                                    on_error=d.loader.on_error)
    if labels is not None:
        ds.labels = np.asarray(labels, dtype=np.int64)
    sampler = EpochSampler(len(ds), batch_size=batch_size, shuffle="none", tail="keep",
                           rows=ds.rows)
    return stage_loader(ctx, ds, sampler, workers, evaluation=spec)


def test_selection(ctx: Context) -> tuple[str, np.ndarray, np.ndarray]:
    """(split, rows, labels) of the test set every stage evaluates on: the manifest's test role
    when it has one, else all of ``recipe.eval.split``."""
    ids, labels = ctx.manifest.rows("test")
    if len(ids):
        return ctx.manifest.spec.test.split, ids, labels
    split = ctx.recipe.eval.split
    ids = ctx.index.split_ids(split)
    return split, ids, ctx.index.label[ids]


def test_loader(ctx: Context, batch_size: int = 512, workers: int = 0):
    """The balanced test set of ``test_selection``."""
    split, ids, labels = test_selection(ctx)
    return eval_loader(ctx, split, ids, labels=labels, batch_size=batch_size, workers=workers)


def manifest_eval_loader(ctx: Context, batch_size: int = 512, workers: int = 0):
    """The training manifest's samples with their observed labels, without augmentation."""
    ids, observed = ctx.manifest.rows("labeled")
    return eval_loader(ctx, ctx.manifest.header["spec"]["split"], ids,
                       labels=observed, batch_size=batch_size, workers=workers)


def capped_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Positions of ``labels`` keeping at most ``per_class`` of each label (all of a smaller
    class; negative labels left out), drawn with ``seed``, in their original order."""
    rng = np.random.default_rng([seed, 7])
    keep = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())),
                       replace=False) for c in np.unique(labels[labels >= 0])]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def knn_bank(ctx: Context) -> tuple[str, np.ndarray, np.ndarray]:
    """(split, rows, labels) of the kNN monitor's bank (``pretrain.knn.bank``): by default the
    manifest's labeled training images with their observed labels, at most ``bank_per_class``
    per observed class; ``clean_train``: a class-balanced sample of the whole train split with
    its clean labels."""
    knn, seed = ctx.recipe.pretrain.knn, ctx.recipe.seed
    split = ctx.manifest.header["spec"]["split"]
    if knn.bank == "clean_train":
        rows = balanced_rows(ctx.index, split, knn.bank_per_class, seed)
        return split, rows, ctx.index.label[rows]
    ids, observed = ctx.manifest.rows("labeled")
    keep = capped_per_class(np.asarray(observed), knn.bank_per_class, seed)
    return split, np.asarray(ids)[keep], np.asarray(observed)[keep]


def knn_loaders(ctx: Context):
    knn, seed = ctx.recipe.pretrain.knn, ctx.recipe.seed
    split, rows, labels = knn_bank(ctx)
    n_cls = ctx.index.num_classes
    queries = balanced_rows(ctx.index, ctx.recipe.eval.split, max(1, knn.queries // n_cls), seed)
    return eval_loader(ctx, split, rows, labels=labels), \
        eval_loader(ctx, ctx.recipe.eval.split, queries)
