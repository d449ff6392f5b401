"""`ltscale run`: data → pretrain → finetune → eval, plus the baselines, as one MLflow parent run
with a child run per stage."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import yaml

from ltscale.config import Recipe, flatten
from ltscale.data.manifest_stats import manifest_stats
from ltscale.eval.report import SUMMARY_HEADER, markdown_table, summary_rows, write_report
from ltscale.stages.context import Context, make_context
from ltscale.eval.aggregate import merge_seeds
from ltscale.stages.evaluate import evaluate_logits, evaluate_noise
from ltscale.stages.finetune import predict_images, run_finetune
from ltscale.stages.pretrain import new_encoder, run_pretrain, run_scratch
from ltscale.stages.selftrain import check_pool, run_selftrain


@contextlib.contextmanager
def _stage(ctx: Context, name: str, source: str | None = None):
    """A child run: the stage's tags, the resolved recipe as params and, when the stage starts
    from another one's output, that run's id (``ltscale.source_run``: lineage)."""
    tags = ctx.tags(name) | ({"ltscale.source_run": source} if source else {})
    with ctx.tracker.run(name, nested=True, tags=tags) as run:
        ctx.tracker.log_params(flatten(ctx.recipe.model_dump()))
        yield run


def _seed_recipe(recipe: Recipe, seed: int, several: bool) -> Recipe:
    r = recipe.model_copy(deep=True)
    r.seed = seed
    if several:
        r.output_dir = str(Path(recipe.output_dir) / f"seed{seed}")
    return r


def run_pipeline(recipe: Recipe, tracker, progress: bool = True, log=print) -> dict:
    """The whole pipeline; with ``recipe.seeds`` the training stages run once per seed (each its
    own nested run and output folder ``seed<S>/``) and the report gives mean ± std."""
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
                log(f"seed {seed}:")
                with tracker.run(f"seed={seed}", nested=True, tags={"ltscale.stage": "seed"}):
                    runs.append(_run_seed(r, tracker, progress, log))
            else:
                runs.append(_run_seed(r, tracker, progress, log))
        ctx = runs[0]["ctx"]
        names = list(runs[0]["results"])
        results = {n: merge_seeds([run["results"][n] for run in runs]) if several
                   else runs[0]["results"][n] for n in names}
        noise = {n: runs[0]["noise"][n] for n in runs[0]["noise"]} if not several else {
            f"{n} (seed {s})": run["noise"][n] for s, run in zip(seeds, runs) for n in run["noise"]}
        timings = {k: sum(run["timings"][k] for run in runs) for k in runs[0]["timings"]}
        context = {"recipe": recipe.name, "manifest": ctx.manifest.hash,
                   "imbalance": recipe.manifest.imbalance, "noise": recipe.manifest.noise,
                   "seeds": seeds,
                   "pretrain kNN top-1 (balanced bank)": [run["knn"] for run in runs],
                   "stage seconds": {k: round(v, 1) for k, v in timings.items()}}
        out = Path(recipe.output_dir)
        paths = write_report(out / "report", f"ltscale report: {recipe.name}", results,
                             ctx.index.classes, ctx.manifest.reference_counts().tolist(), context,
                             noise=noise or None)
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


def _noise(ctx: Context, result: dict) -> dict | None:
    """Noisy/clean separation of the fine-tuning's σ* when it has them and clean labels exist."""
    conf = result.get("confidence")
    lab = ctx.manifest.mask("labeled")
    if conf is None or (ctx.manifest.clean[lab] < 0).all():
        return None
    return evaluate_noise(ctx, conf)


def _run_seed(recipe: Recipe, tracker, progress: bool, log) -> dict:
    """data → pretrain → finetune → eval (+ baselines) for one seed, one child run per stage."""
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    noise: dict[str, dict] = {}
    t = time.perf_counter()
    with tracker.run("data", nested=True, tags={"ltscale.stage": "data"}):
        ctx = make_context(recipe, tracker, progress)
        stats = manifest_stats(ctx.manifest)
        tracker.set_tags(ctx.tags("data"))
        tracker.log_params(flatten(recipe.model_dump()))
        tracker.log_text(json.dumps(ctx.manifest.header, indent=2, default=str),
                         "manifest_header.json")
        tracker.log_metrics({"manifest/samples": stats["samples"],
                             "manifest/noise_rate": stats["noise_rate"],
                             "manifest/imbalance_ratio": stats["imbalance_ratio"]})
        tracker.log_artifact(ctx.manifest_path)
        tracker.log_artifact(Path(recipe.data.shards) / "card.json")
    timings["data"] = time.perf_counter() - t
    check_pool(ctx)  # self-training without an unlabeled pool stops before any training
    tracker.set_tags(ctx.tags("pipeline"))
    log(f"data: {stats['samples']} training images, imbalance {stats['imbalance_ratio']:.0f}, "
        f"realised noise {stats['noise_rate']:.3f}, manifest {ctx.manifest.hash}")

    t = time.perf_counter()
    with _stage(ctx, "pretrain"):
        pre = run_pretrain(ctx)
        pretrain_run = tracker.run_id
    timings["pretrain"] = time.perf_counter() - t
    knn = pre["history"][-1].get("knn/top1")
    log(f"pretrain: {len(pre['history'])} epochs in {timings['pretrain']:.0f}s, "
        f"kNN top-1 {knn if knn is None else f'{knn:.4f}'}")

    loss = recipe.finetune.loss.name
    name = f"{recipe.pretrain.final_method.name} + {loss}"
    t = time.perf_counter()
    with _stage(ctx, "finetune", source=pretrain_run):
        ft = run_finetune(ctx, pre["encoder"], "finetune", pre["encoder"])
        finetune_run = tracker.run_id
        tracker.set_tags({"ltscale.encoder": str(pre["encoder"].resolve())})
    timings["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    with _stage(ctx, "eval", source=finetune_run):
        results[name] = evaluate_logits(ctx, ft["logits"], ft["targets"], name)
        if (n := _noise(ctx, ft)) is not None:
            noise[name] = n
    timings["eval"] = time.perf_counter() - t

    if recipe.baselines.random_encoder:
        t = time.perf_counter()
        with _stage(ctx, "baseline_random_encoder"):
            base = run_finetune(ctx, new_encoder(ctx), "baseline_random_encoder")
            model = f"random encoder + {loss}"
            results[model] = evaluate_logits(ctx, base["logits"], base["targets"], model)
        timings["baseline_random_encoder"] = time.perf_counter() - t
    scratch = None
    if recipe.baselines.ce_scratch.enabled:
        t = time.perf_counter()
        with _stage(ctx, "baseline_ce_scratch"):
            scratch = run_scratch(ctx)
            logits, targets = predict_images(ctx, scratch["method"])
            model = f"scratch + {recipe.baselines.ce_scratch.loss.name}"
            results[model] = evaluate_logits(ctx, logits, targets, model)
        timings["baseline_ce_scratch"] = time.perf_counter() - t
    if recipe.selftrain.enabled:  # teacher → pseudo-labels for D_U → student (Yang & Xu 2020)
        t = time.perf_counter()
        with _stage(ctx, "selftrain"):
            st = run_selftrain(ctx, ft, pre["encoder"], scratch)
            results[st["name"]] = evaluate_logits(ctx, st["logits"], st["targets"], st["name"])
        timings["selftrain"] = time.perf_counter() - t
    return {"ctx": ctx, "results": results, "noise": noise, "timings": timings, "knn": knn}
