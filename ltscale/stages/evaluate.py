"""Evaluation stage: metrics on the balanced test split and the report."""

from __future__ import annotations

from ltscale.eval.metrics import classification_metrics
from ltscale.stages.context import Context


def evaluate_logits(ctx: Context, logits, targets) -> dict:
    e = ctx.recipe.eval
    m = classification_metrics(logits, targets, ctx.manifest.reference_counts().tolist(),
                               e.many_threshold, e.few_threshold)
    scalars = {f"test/{k}": v for k, v in m.items() if k in
               ("top1", "top5", "many", "medium", "few", "mean_per_class") and v is not None}
    scalars |= {f"test/class_{c}": v for c, v in enumerate(m["per_class"])}
    ctx.tracker.log_metrics(scalars)
    return m
