"""Loaders the stages share, built from the recipe."""

from __future__ import annotations

from ltscale.data.augment import TwoViews, ViewSpec, eval_view, ssl_view
from ltscale.data.dataset import ManifestDataset, balanced_rows, make_loader
from ltscale.data.sampling import EpochSampler
from ltscale.stages.context import Context


def view_spec(ctx: Context) -> ViewSpec:
    d, a = ctx.recipe.data, ctx.recipe.pretrain.augment
    return ViewSpec(size=d.image_size, mean=tuple(d.mean), std=tuple(d.std),
                    crop_scale=tuple(a.crop_scale), flip=a.flip, jitter=a.jitter, blur=a.blur)


def train_loader(ctx: Context, *, views: int, batch_size: int, workers: int, seed: int,
                 roles: tuple[str, ...] = ("labeled",)):
    spec = view_spec(ctx)
    transform = TwoViews(ssl_view(spec)) if views == 2 else ssl_view(spec)
    ds = ManifestDataset.from_manifest(ctx.index, ctx.manifest, transform, ctx.recipe.data.channels,
                                       roles=roles)
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=seed, drop_last=True,
                           rank=ctx.backend.rank, world_size=ctx.backend.world_size)
    return make_loader(ds, batch_size=batch_size, workers=workers, sampler=sampler), sampler


def eval_loader(ctx: Context, split: str, rows=None, *, labels=None, batch_size: int = 512,
                workers: int = 0):
    """Deterministic views of ``rows`` of ``split`` (all of it by default)."""
    ds = ManifestDataset.from_split(ctx.index, split, eval_view(view_spec(ctx)),
                                    ctx.recipe.data.channels, rows=rows)
    if labels is not None:
        ds.labels = labels
    return make_loader(ds, batch_size=batch_size, workers=workers)


def test_loader(ctx: Context, batch_size: int = 512, workers: int = 0):
    """The balanced test set: the manifest's test role when it has one, else recipe.eval.split."""
    ids, labels = ctx.manifest.rows("test")
    if len(ids):
        return eval_loader(ctx, ctx.manifest.spec.test.split, ids, labels=labels,
                           batch_size=batch_size, workers=workers)
    return eval_loader(ctx, ctx.recipe.eval.split, batch_size=batch_size, workers=workers)


def manifest_eval_loader(ctx: Context, batch_size: int = 512, workers: int = 0):
    """The training manifest's samples with their observed labels, without augmentation."""
    ids, observed = ctx.manifest.rows("labeled")
    return eval_loader(ctx, ctx.manifest.header["spec"]["split"], ids,
                       labels=observed, batch_size=batch_size, workers=workers)


def knn_loaders(ctx: Context):
    knn, seed = ctx.recipe.pretrain.knn, ctx.recipe.seed
    bank = balanced_rows(ctx.index, ctx.manifest.header["spec"]["split"], knn.bank_per_class, seed)
    n_cls = ctx.index.num_classes
    queries = balanced_rows(ctx.index, ctx.recipe.eval.split, max(1, knn.queries // n_cls), seed)
    return eval_loader(ctx, ctx.manifest.header["spec"]["split"], bank), \
        eval_loader(ctx, ctx.recipe.eval.split, queries)
