"""What a checkpoint must share with a run to be resumed by it: the settings that change a
training trajectory, hashed. Settings that do not change it are left out, so a checkpoint resumes
across them: loader workers, checkpoint cadence, the kNN monitor; of the engine, how ranks talk
and how kernels lay out memory (a run may resume on another number of ranks, as another backend
of the same checkpoint format, or with channels-last/compile switched)."""

from __future__ import annotations

import hashlib
import json

from ltscale.stages.context import Context

VOLATILE = {"workers", "checkpoint_every", "keep_checkpoints", "knn"}
VOLATILE_ENGINE = {"backend", "dist_backend", "timeout_s", "channels_last", "compile",
                   "zero_stage"}


def engine_fingerprint(ctx: Context) -> dict:
    """The engine settings that change a training trajectory."""
    return {"engine": ctx.recipe.engine.model_dump(exclude=VOLATILE_ENGINE)}


def digest(*parts) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as sorted-key JSON."""
    blob = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def loop_fingerprint(ctx: Context, settings: dict) -> str:
    """A training stage's fingerprint: manifest, seed, data, the stage's settings (the epoch
    count included: the lr and momentum schedules span all epochs) and the engine's precision,
    batch-norm sync and clipping."""
    settings = {k: v for k, v in settings.items() if k not in VOLATILE}
    return digest(ctx.manifest.hash, ctx.recipe.seed, ctx.recipe.data.model_dump(), settings,
                  engine_fingerprint(ctx))
