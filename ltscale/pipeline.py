"""`ltscale run`: data → pretrain → finetune → eval, plus the baselines, as one MLflow parent run
with a child run per stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ltscale.config import Recipe, flatten
from ltscale.data.manifest_stats import manifest_stats
from ltscale.eval.report import SUMMARY_HEADER, markdown_table, summary_rows, write_report
from ltscale.stages.context import Context, make_context
from ltscale.stages.evaluate import evaluate_logits
from ltscale.stages.finetune import predict_images, run_finetune
from ltscale.stages.pretrain import load_encoder, new_encoder, run_pretrain, run_scratch


def _stage(ctx: Context, name: str):
    return ctx.tracker.run(name, nested=True, tags=ctx.tags(name))


def run_pipeline(recipe: Recipe, tracker, progress: bool = True, log=print) -> dict:
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    with tracker.run(recipe.name, tags={"ltscale.stage": "pipeline"}):
        tracker.log_params(flatten(recipe.model_dump()))
        parent_id = tracker.run_id
        t = time.perf_counter()
        with tracker.run("data", nested=True, tags={"ltscale.stage": "data"}):
            ctx = make_context(recipe, tracker, progress)
            stats = manifest_stats(ctx.manifest)
            tracker.set_tags(ctx.tags("data"))
            tracker.log_metrics({"manifest/samples": stats["samples"],
                                 "manifest/noise_rate": stats["noise_rate"],
                                 "manifest/imbalance_ratio": stats["imbalance_ratio"]})
            tracker.log_artifact(ctx.manifest_path)
            tracker.log_artifact(Path(recipe.data.shards) / "card.json")
        timings["data"] = time.perf_counter() - t
        tracker.set_tags(ctx.tags("pipeline"))
        log(f"data: {stats['samples']} training images, imbalance {stats['imbalance_ratio']:.0f}, "
            f"realised noise {stats['noise_rate']:.3f}, manifest {ctx.manifest.hash}")

        t = time.perf_counter()
        with _stage(ctx, "pretrain"):
            pre = run_pretrain(ctx)
        timings["pretrain"] = time.perf_counter() - t
        knn = pre["history"][-1].get("knn/top1")
        log(f"pretrain: {len(pre['history'])} epochs in {timings['pretrain']:.0f}s, "
            f"kNN top-1 {knn if knn is None else f'{knn:.4f}'}")

        loss = recipe.finetune.loss.name
        t = time.perf_counter()
        with _stage(ctx, "finetune"):
            ft = run_finetune(ctx, load_encoder(pre["encoder"]), "finetune", pre["encoder"])
            tracker.set_tags({"ltscale.encoder": str(pre["encoder"].resolve())})
        timings["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        with _stage(ctx, "eval"):
            results[f"{recipe.pretrain.method.name} + {loss}"] = evaluate_logits(
                ctx, ft["logits"], ft["targets"])
        timings["eval"] = time.perf_counter() - t

        if recipe.baselines.random_encoder:
            t = time.perf_counter()
            with _stage(ctx, "baseline_random_encoder"):
                base = run_finetune(ctx, new_encoder(ctx), "baseline_random_encoder")
                results[f"random encoder + {loss}"] = evaluate_logits(
                    ctx, base["logits"], base["targets"])
            timings["baseline_random_encoder"] = time.perf_counter() - t
        if recipe.baselines.ce_scratch.enabled:
            t = time.perf_counter()
            with _stage(ctx, "baseline_ce_scratch"):
                scratch = run_scratch(ctx)
                logits, targets = predict_images(ctx, scratch["method"])
                results[f"scratch + {recipe.baselines.ce_scratch.loss.name}"] = evaluate_logits(
                    ctx, logits, targets)
            timings["baseline_ce_scratch"] = time.perf_counter() - t

        context = {"recipe": recipe.name, "manifest": ctx.manifest.hash,
                   "imbalance": recipe.manifest.imbalance, "noise": recipe.manifest.noise,
                   "pretrain kNN top-1 (balanced bank)": knn,
                   "stage seconds": {k: round(v, 1) for k, v in timings.items()}}
        paths = write_report(ctx.out / "report", f"ltscale report: {recipe.name}", results,
                             ctx.index.classes, ctx.manifest.reference_counts().tolist(), context)
        for p in paths.values():
            tracker.log_artifact(p, "report")
        tracker.log_metrics({f"time/{k}_seconds": v for k, v in timings.items()})
    table = markdown_table(SUMMARY_HEADER, summary_rows(results))
    summary = {"parent_run_id": parent_id, "report": str(paths["md"]), "timings": timings,
               "results": {k: {m: v[m] for m in ("top1", "top5", "many", "medium", "few")}
                           for k, v in results.items()}, "table": table}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
