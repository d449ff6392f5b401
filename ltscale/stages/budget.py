"""Compute budgets: what each model of a report cost, and the from-scratch networks' epochs
under ``baselines.ce_scratch.budget: match``.

A budget is counted in **images seen** (training samples drawn by the sampler, summed over every
stage that trains the model: pretraining, then the fine-tuning head or end-to-end network and a
classifier re-training; a sample's several views count once, and a cached feature counts as its
image), **optimizer steps** and **wall-clock seconds** of those stages on the machine that ran
them. The forward-only feature-cache pass is in the seconds, not in the images.

``planned_*`` compute the images and steps a recipe's stages will take from the recipe and the
manifest alone (what ``budget: match`` needs before anything is trained); ``measured`` sums what a
stage's history records. The two agree (a smoke test checks it).
"""

from __future__ import annotations

import math

from ltscale.methods import method_class
from ltscale.stages.context import Context
from ltscale.stages.results import Budget

HEAD_MODES = ("linear", "proj_head", "last_fc")


def measured(history: list[dict], seconds: float) -> Budget:
    """The images and steps a stage's history records (engine loop: ``epoch/images`` and
    ``epoch/steps``; head training: ``images`` and ``steps``), with its wall seconds."""
    images = sum(int(r.get("epoch/images", r.get("images", 0))) for r in history)
    steps = sum(int(r.get("epoch/steps", r.get("steps", 0))) for r in history)
    return Budget(images, steps, seconds)


def loop_plan(n: int, batch_size: int, epochs: int, max_steps: int | None = None,
              accumulate: int = 1, world_size: int = 1) -> Budget:
    """Images and steps of the engine loop over ``n`` samples: whole global batches per epoch
    (the tail is dropped), at most ``max_steps`` steps an epoch."""
    per_step = batch_size * accumulate * world_size
    steps = n // per_step
    if max_steps:
        steps = min(steps, max_steps)
    return Budget(epochs * steps * per_step, epochs * steps)


def head_plan(n: int, batch_size: int, epochs: int) -> Budget:
    """Images and steps of a head trained on cached features: every sample once an epoch, the
    last batch short (a last batch of one sample is skipped when the head has batch norm; not
    counted here)."""
    return Budget(epochs * n, epochs * math.ceil(n / batch_size))


def _pretrain_plan(ctx: Context) -> Budget:
    p = ctx.recipe.pretrain
    total = Budget()
    for stage in p.resolved_stages():
        roles = ("labeled",) if method_class(stage.method.name).uses_labels \
            else ("labeled", "unlabeled")
        n = len(ctx.manifest.rows(*roles)[0])
        total += loop_plan(n, stage.batch_size, stage.epochs, stage.max_steps_per_epoch,
                           p.accumulate, ctx.backend.world_size)
    return total


def _finetune_plan(ctx: Context) -> Budget:
    f = ctx.recipe.finetune
    n = len(ctx.manifest.rows("labeled")[0])
    if f.mode in HEAD_MODES:
        plan = head_plan(n, f.batch_size, f.epochs)
    else:
        plan = loop_plan(n, f.batch_size, f.epochs, f.max_steps_per_epoch,
                         world_size=ctx.backend.world_size)
    if f.classifier_stage in ("crt", "lws"):
        plan += head_plan(n, f.batch_size, f.crt_epochs)
    return plan


def pipeline_plan(ctx: Context) -> Budget:
    """Images and steps of the two-stage pipeline: pretraining + the recipe's own head."""
    return _pretrain_plan(ctx) + _finetune_plan(ctx)


def scratch_epochs(ctx: Context) -> int:
    """Epochs of each from-scratch network: ``baselines.ce_scratch.epochs``, or with
    ``budget: match`` the fewest whole epochs whose images reach the pipeline's (pretraining +
    fine-tuning), so that the scratch network never sees fewer images than the pipeline."""
    s = ctx.recipe.baselines.ce_scratch
    if s.budget == "epochs":
        return s.epochs
    n = len(ctx.manifest.rows("labeled")[0])
    per_epoch = loop_plan(n, s.batch_size, 1, s.max_steps_per_epoch,
                          world_size=ctx.backend.world_size).images
    if per_epoch == 0:
        return s.epochs  # no whole batch: the loop refuses it with its own message
    return max(1, math.ceil(pipeline_plan(ctx).images / per_epoch))


def scratch_budget_note(ctx: Context) -> str | None:
    """What budget the from-scratch networks had, in words, for the report (None without them)."""
    s = ctx.recipe.baselines.ce_scratch
    if not s.enabled:
        return None
    epochs = scratch_epochs(ctx)
    if s.budget == "epochs":
        return (f"From-scratch networks: {epochs} epochs (baselines.ce_scratch.budget: epochs), "
                "not matched to the two-stage pipeline's images.")
    return (f"From-scratch networks: budget match, {epochs} epochs, the fewest whole epochs that "
            f"see at least the two-stage pipeline's {pipeline_plan(ctx).images:,} images "
            "(pretraining + fine-tuning).")
