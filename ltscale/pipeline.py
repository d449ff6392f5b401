"""`ltscale run`: data → pretrain → finetune → eval, plus the baselines, as one MLflow parent run
with a child run per stage."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from ltscale.config.overrides import flatten
from ltscale.config.schema import Recipe
from ltscale.data.manifest_stats import manifest_stats
from ltscale.engine.knn import KnnMonitor
from ltscale.eval.aggregate import merge_seeds
from ltscale.eval.report import SUMMARY_HEADER, markdown_table, summary_rows, write_report
from ltscale.models.files import load_encoder
from ltscale.stages.budget import measured, scratch_budget_note
from ltscale.stages.context import Context, make_context
from ltscale.stages.evaluate import evaluate_logits, evaluate_noise
from ltscale.stages.finetune import run_finetune
from ltscale.stages.loaders import knn_loaders
from ltscale.stages.networks import new_encoder, predict_images
from ltscale.stages.pretrain import label_free_key, run_pretrain, run_scratch, scratch_stage
from ltscale.stages.results import FinetuneResult, Teacher, TrainResult
from ltscale.stages.selftrain import (
    check_pool,
    finetuned_teacher,
    run_selftrain,
    scratch_teacher,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HeadRun:
    """One head on the pretrained encoder: its report name, fine-tuning and test metrics."""
    model: str
    finetune: FinetuneResult
    metrics: dict[str, float]
    noise: dict | None          # σ*'s noisy/clean separation (SuperLoss heads with clean labels)


@dataclasses.dataclass
class SeedRun:
    """One seed's stages: report name → test metrics, noise separations, seconds per stage and
    the last pretraining epoch's kNN top-1 (None without the monitor)."""
    ctx: Context
    results: dict[str, dict]
    noise: dict[str, dict]
    timings: dict[str, float]
    knn: float | None
    features: object = None     # the recipe's own head's test feature cache (the feature map)
    model: str = ""             # that head's report name


@contextlib.contextmanager
def _stage(ctx: Context, name: str, source: str | None = None, recipe: Recipe | None = None):
    """A child run: the stage's tags, the resolved recipe (``recipe``: the stage's own, where it
    differs from the context's) as params and, when the stage starts from another one's output,
    that run's id (``ltscale.source_run``: lineage)."""
    tags = ctx.tags(name) | ({"ltscale.source_run": source} if source else {})
    with ctx.tracker.run(name, nested=True, tags=tags) as run:
        ctx.tracker.log_params(flatten((recipe or ctx.recipe).model_dump()))
        yield run


def machine(device) -> str:
    """The machine that measured a report's seconds, in words: the GPU on CUDA, else the CPU
    model and core count (os.sched_getaffinity: the cores this process may use); torch version."""
    import os
    import platform

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        model = platform.processor() or "CPU"
        try:
            with open("/proc/cpuinfo") as fh:
                model = next((ln.split(":", 1)[1].strip() for ln in fh
                              if ln.startswith("model name")), model)
        except OSError:
            pass
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count()
        where = f"{model}, {cores} cores"
    return f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _seed_recipe(recipe: Recipe, seed: int, several: bool) -> Recipe:
    r = recipe.model_copy(deep=True)
    r.seed = seed
    if several:
        r.output_dir = str(Path(recipe.output_dir) / f"seed{seed}")
    return r


def run_pipeline(recipe: Recipe, tracker, progress: bool = True,
                 shared: dict | None = None, scratch_only: bool = False) -> dict:
    """The whole pipeline; with ``recipe.seeds`` the training stages run once per seed (each its
    own nested run and output folder ``seed<S>/``) and the report gives mean ± std.

    ``shared`` (a dict kept across the points of a sweep) lets a point reuse an earlier point's
    label-free pretraining of the same images (see ``_pretrain``); None: always pretrain.
    ``scratch_only`` (``ltscale scratch``): only the data stage and the from-scratch networks
    of ``baselines.ce_scratch``, each evaluated, in the same report, lineage and MLflow runs."""
    from ltscale.stages.context import effective_recipe

    recipe = effective_recipe(recipe)  # manifest.file: params describe the manifest used
    seeds = recipe.seeds or [recipe.seed]
    several = len(seeds) > 1
    runs = []
    with tracker.run(recipe.name, tags={"ltscale.stage": "pipeline"}):
        tracker.log_params(flatten(recipe.model_dump()))
        tracker.log_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
                         "recipe.yaml")
        parent_id = tracker.run_id
        for seed in seeds:
            r = _seed_recipe(recipe, seed, several)
            if several:
                logger.info(f"seed {seed}:")
                with tracker.run(f"seed={seed}", nested=True, tags={"ltscale.stage": "seed"}):
                    runs.append(_run_seed(r, tracker, progress, shared, scratch_only))
            else:
                runs.append(_run_seed(r, tracker, progress, shared, scratch_only))
        ctx = runs[0].ctx
        names = list(runs[0].results)
        results = {n: merge_seeds([run.results[n] for run in runs]) if several
                   else runs[0].results[n] for n in names}
        noise = dict(runs[0].noise) if not several else {
            f"{n} (seed {s})": run.noise[n] for s, run in zip(seeds, runs) for n in run.noise}
        timings = {k: sum(run.timings[k] for run in runs) for k in runs[0].timings}
        context = {"recipe": recipe.name, "manifest": ctx.manifest.hash,
                   "imbalance": recipe.manifest.imbalance, "noise": recipe.manifest.noise,
                   "seeds": seeds,
                   "pretrain kNN top-1": [run.knn for run in runs],
                   "stage seconds": {k: round(v, 1) for k, v in timings.items()},
                   "scratch budget": scratch_budget_note(runs[0].ctx),
                   "machine": machine(ctx.device)}
        if scratch_only:
            del context["pretrain kNN top-1"]
        if context["scratch budget"] is None:
            del context["scratch budget"]
        out = Path(recipe.output_dir)
        paths = write_report(out / "report", f"ltscale report: {recipe.name}", results,
                             ctx.index.classes, ctx.manifest.reference_counts().tolist(), context,
                             noise=noise or None, embedding=_embedding(recipe, runs[0]))
        for p in paths.values():
            tracker.log_artifact(p, "report")
        tracker.log_metrics({f"time/{k}_seconds": v for k, v in timings.items()})
    table = markdown_table(SUMMARY_HEADER, summary_rows(results))
    summary = {"parent_run_id": parent_id, "report": str(paths["md"]), "timings": timings,
               "seeds": seeds,
               "results": {k: {m: v.get(m) for m in ("top1", "top5", "many", "medium", "few")}
                           for k, v in results.items()}, "table": table}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _embedding(recipe: Recipe, run: SeedRun) -> tuple | None:
    """The first seed's test features of the recipe's own head (as cached for it: the encoder's
    output, or the frozen projector layer's for last_fc), a subsample read from the cache."""
    cache = run.features
    if not recipe.eval.embedding_plot or cache is None or not len(cache):
        return None
    from ltscale.eval.embedding import stratified_subsample

    keep = stratified_subsample(cache.labels, seed=recipe.seed)
    return (np.asarray(cache.features[0, keep], dtype=np.float32), cache.labels[keep],
            run.model)


def _noise(ctx: Context, result: FinetuneResult) -> dict | None:
    """Noisy/clean separation of the fine-tuning's σ* when it has them and clean labels exist."""
    conf = result.confidence
    lab = ctx.manifest.mask("labeled")
    if conf is None or (ctx.manifest.clean[lab] < 0).all():
        return None
    return evaluate_noise(ctx, conf)


def _knn_with_own_labels(ctx: Context, pre: TrainResult) -> TrainResult:
    """A reused encoder's final kNN score, rescored with this run's bank: the default bank holds
    the manifest's observed labels, which differ between points that share an encoder."""
    knn = ctx.recipe.pretrain.knn
    if not (knn.enabled and knn.bank == "manifest" and pre.history and ctx.backend.is_main):
        return pre
    monitor = KnnMonitor(*knn_loaders(ctx), ctx.index.num_classes, ctx.device, knn.k,
                         knn.temperature)
    top1 = monitor(load_encoder(pre.encoder).to(ctx.device))
    ctx.tracker.log_metrics({"knn/top1": top1})
    last = pre.history[-1] | {"knn/top1": top1}
    return dataclasses.replace(pre, history=[*pre.history[:-1], last])


def _pretrain(ctx: Context, shared: dict | None) -> tuple[TrainResult, str]:
    """The pretrain stage, or, when an earlier run of this invocation (a sweep point) already
    pretrained on the same images with the same seed and settings and the pretraining reads no
    labels (``label_free_key``), a pretrain run that records that run's encoder as its own.
    Returns (result, the pretrain run id that made the encoder)."""
    key = label_free_key(ctx) if shared is not None else None
    if key is not None and key in shared:
        pre, source = shared[key]
        with _stage(ctx, "pretrain", source=source):
            ctx.tracker.set_tags({"ltscale.pretrain_reused": "true",
                                  "ltscale.encoder": str(pre.encoder.resolve())})
            pre = _knn_with_own_labels(ctx, pre)
        logger.info(f"pretrain: reusing the encoder of run {source} ({pre.encoder}): same images, "
            "seed and settings, and the pretraining reads no labels")
        return pre, source
    with _stage(ctx, "pretrain"):
        pre = run_pretrain(ctx)
        run_id = ctx.tracker.run_id
    if key is not None:
        # what a later point reuses: the files and history, not the trained module
        shared[key] = (dataclasses.replace(pre, method=None), run_id)
    return pre, run_id


def _finetune_and_eval(ctx: Context, loss: str, pre: TrainResult, pretrain_run: str,
                       timings: dict) -> HeadRun:
    """One head (``loss``; the recipe's finetune.loss with that name) on the pretrained encoder:
    a finetune and an eval child run. The first head trains in ``finetune/``, an extra one in
    ``finetune_<loss>/``; both read the feature cache in ``finetune/features``. The runs' params
    are the recipe with that loss (what a recipe training only this head would say)."""
    main, encoder = loss == ctx.recipe.finetune.loss.name, pre.encoder
    head_loss = ctx.recipe.finetune.loss.model_copy(update={"name": loss})
    recipe = ctx.recipe.model_copy(update={"finetune": ctx.recipe.finetune.model_copy(
        update={"loss": head_loss})})
    model = f"{ctx.recipe.pretrain.final_method.name} + {loss}"
    t = time.perf_counter()
    with _stage(ctx, "finetune", source=pretrain_run, recipe=recipe):
        ft = run_finetune(ctx, encoder, "finetune" if main else f"finetune_{loss}", encoder,
                          cache_dir=ctx.out / "finetune" / "features", loss=head_loss)
        finetune_run = ctx.tracker.run_id
        ctx.tracker.set_tags({"ltscale.encoder": str(Path(encoder).resolve())})
    timings["finetune"] += time.perf_counter() - t
    t = time.perf_counter()
    with _stage(ctx, "eval", source=finetune_run, recipe=recipe):
        metrics = evaluate_logits(ctx, ft.logits, ft.targets, model,
                                  budget=pre.budget + measured(ft.history, ft.seconds))
        noise = _noise(ctx, ft)
    timings["eval"] += time.perf_counter() - t
    return HeadRun(model=model, finetune=ft, metrics=metrics, noise=noise)


def _data_stage(recipe: Recipe, tracker, progress: bool, timings: dict) -> Context:
    """The data child run: shards, manifest, their statistics and files."""
    t = time.perf_counter()
    with tracker.run("data", nested=True, tags={"ltscale.stage": "data"}):
        ctx = make_context(recipe, tracker, progress)
        stats = manifest_stats(ctx.manifest, ctx.index)
        tracker.set_tags(ctx.tags("data"))
        tracker.log_params(flatten(ctx.recipe.model_dump()))
        tracker.log_text(json.dumps(ctx.manifest.header, indent=2, default=str),
                         "manifest_header.json")
        tracker.log_metrics({"manifest/samples": stats["samples"],
                             "manifest/noise_rate": stats["noise_rate"],
                             "manifest/imbalance_ratio": stats["imbalance_ratio"]})
        tracker.log_artifact(ctx.manifest_path)
        tracker.log_artifact(Path(recipe.data.shards) / "card.json")
    timings["data"] = time.perf_counter() - t
    tracker.set_tags(ctx.tags("pipeline"))
    logger.info(f"data: {stats['samples']} training images, imbalance "
                f"{stats['imbalance_ratio']:.0f}, realised noise {stats['noise_rate']:.3f}, "
                f"manifest {ctx.manifest.hash}")
    return ctx


def _scratch_baselines(ctx: Context, timings: dict, results: dict) -> TrainResult | None:
    """One from-scratch network per loss of ``baselines.ce_scratch``, each trained and
    evaluated in its own child run; returns the first (self-training's ``ce_scratch`` teacher)."""
    scratch = None
    for i, scratch_loss in enumerate(ctx.recipe.baselines.ce_scratch.losses()):
        t = time.perf_counter()
        stage = f"baseline_{scratch_stage(ctx, scratch_loss)}"
        with _stage(ctx, stage):
            trained = run_scratch(ctx, scratch_loss)
            logits, targets = predict_images(ctx, trained.method)
            model = f"scratch + {scratch_loss}"
            results[model] = evaluate_logits(ctx, logits, targets, model, budget=trained.budget)
        timings[stage] = time.perf_counter() - t
        if i == 0:
            scratch = trained
    return scratch


def _teacher(ctx: Context, ft: FinetuneResult, pre: TrainResult,
             scratch: TrainResult | None) -> Teacher:
    """Self-training's teacher as ``selftrain.teacher`` names it: the fine-tuned model (its cost
    with its pretraining) or the from-scratch network, trained here when its baseline is off."""
    if ctx.recipe.selftrain.teacher == "finetune":
        return finetuned_teacher(ctx, ft, pre.budget + measured(ft.history, ft.seconds))
    return scratch_teacher(ctx, scratch or run_scratch(ctx))


def _run_seed(recipe: Recipe, tracker, progress: bool, shared: dict | None = None,
              scratch_only: bool = False) -> SeedRun:
    """data → pretrain → finetune → eval (+ baselines) for one seed, one child run per stage;
    ``scratch_only``: data → the from-scratch networks → eval."""
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    noise: dict[str, dict] = {}
    ctx = _data_stage(recipe, tracker, progress, timings)
    if scratch_only:
        _scratch_baselines(ctx, timings, results)
        return SeedRun(ctx=ctx, results=results, noise=noise, timings=timings, knn=None)
    check_pool(ctx)  # self-training without an unlabeled pool stops before any training

    t = time.perf_counter()
    pre, pretrain_run = _pretrain(ctx, shared)
    timings["pretrain"] = time.perf_counter() - t
    knn = pre.last_epoch.get("knn/top1")
    logger.info(f"pretrain: {len(pre.history)} epochs in {timings['pretrain']:.0f}s, "
                f"kNN top-1 {knn if knn is None else f'{knn:.4f}'}")

    loss = recipe.finetune.loss.name
    timings["finetune"] = timings["eval"] = 0.0
    heads = [_finetune_and_eval(ctx, head_loss, pre, pretrain_run, timings)
             for head_loss in [loss, *recipe.finetune.extra_losses]]  # extras share the cache
    ft = heads[0].finetune  # the recipe's own head (self-training's teacher)
    for head in heads:
        results[head.model] = head.metrics
        if head.noise is not None:
            noise[head.model] = head.noise

    if recipe.baselines.random_encoder:
        t = time.perf_counter()
        with _stage(ctx, "baseline_random_encoder"):
            base = run_finetune(ctx, new_encoder(ctx), "baseline_random_encoder")
            model = f"random encoder + {loss}"
            results[model] = evaluate_logits(ctx, base.logits, base.targets, model,
                                             budget=measured(base.history, base.seconds))
        timings["baseline_random_encoder"] = time.perf_counter() - t
    scratch = None
    if recipe.baselines.ce_scratch.enabled:
        scratch = _scratch_baselines(ctx, timings, results)
    if recipe.selftrain.enabled:  # teacher → pseudo-labels for D_U → student (Yang & Xu 2020)
        t = time.perf_counter()
        with _stage(ctx, "selftrain"):
            st = run_selftrain(ctx, _teacher(ctx, ft, pre, scratch), pre.encoder)
            results[st.name] = evaluate_logits(ctx, st.logits, st.targets, st.name,
                                               budget=st.budget)
        timings["selftrain"] = time.perf_counter() - t
    return SeedRun(ctx=ctx, results=results, noise=noise, timings=timings, knn=knn,
                   features=ft.test_cache, model=heads[0].model)
