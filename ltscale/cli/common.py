"""What the subcommands share: the recipe from the command line (with ``--data`` and the output
folder checked), the tracker, lineage tags and ``NAME=VALUE`` options."""

from __future__ import annotations

import contextlib
import json
import os

from ltscale.core.errors import LtscaleError


def recipe_from_args(args):
    from ltscale.config.loading import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source.path={args.data}")
    recipe = load_recipe(args.recipe, overrides)
    check_data_flag(recipe, getattr(args, "data", None))
    check_output_dir(recipe)
    check_device(recipe)
    return recipe


def check_device(recipe) -> None:
    """``device: cuda`` where torch sees no GPU: refused before any work."""
    if recipe.device == "cuda":
        from ltscale.engine.backend import check_cuda

        check_cuda()


def check_output_dir(recipe) -> None:
    from ltscale.stages.context import check_output_dir as check

    check(recipe)  # before the output_dir lock creates anything there


def check_data_flag(recipe, data: str | None) -> None:
    """``--data PATH`` either applies or is refused: it must exist, and when ``data.shards``
    already holds a dataset, that dataset must have been built from PATH (else the flag would be
    silently ignored)."""
    if not data:
        return
    from pathlib import Path

    if not Path(data).exists():
        hint = ""
        if recipe.data.source.kind == "idx":  # the quickstart's source: say how to get the data
            from ltscale.data.sources.idx import INSTALL_HINT

            hint = f". {INSTALL_HINT}"
        raise LtscaleError(f"--data {data}: no such file or directory (data directory not "
                           f"found){hint}")
    shards = Path(recipe.data.shards)
    if not (shards / "index.npz").exists():
        return  # the dataset is built from --data
    try:
        built_from = json.loads((shards / "card.json").read_text())["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        built_from = None
    if built_from is None or os.path.realpath(built_from) != os.path.realpath(data):
        raise LtscaleError(f"--data {data} would be ignored: data.shards {shards} already holds "
                           f"a dataset built from {built_from or 'an unknown source'}; set "
                           "data.shards to a new folder to build one from --data, or drop --data")


def tracker(recipe, enabled: bool = True):
    from ltscale.core.dist_env import DistEnv
    from ltscale.track import MlflowTracker, NullTracker

    enabled = enabled and DistEnv.from_env().rank == 0  # only rank 0 of a launched job tracks
    if not enabled:
        return NullTracker()
    from ltscale.track import default_tracking_uri
    from ltscale.track.store import check_tracking

    uri = recipe.tracking.uri or default_tracking_uri()
    check_tracking(uri, timeout_s=5.0)  # an unreachable server: one line within seconds
    try:
        return MlflowTracker(recipe.tracking.uri, recipe.tracking.experiment)
    except (LtscaleError, OSError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy errors
        first = " ".join(str(exc).split())[:300]
        raise LtscaleError(f"tracking store {uri} cannot be used ({type(exc).__name__}: "
                           f"{first}); fix tracking.uri / MLFLOW_TRACKING_URI or pass "
                           "--no-track") from None


def source_tags(ref: str) -> dict[str, str]:
    """Lineage: ``--from`` given as an MLflow run id names the run this one starts from."""
    from pathlib import Path

    return {} if Path(ref).exists() or "/" in ref else {"ltscale.source_run": ref}


def flatten(d: dict) -> dict:
    from ltscale.config.overrides import flatten as _flatten

    return _flatten(d)


def options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise LtscaleError(f"--option {pair!r}: use NAME=VALUE (e.g. --option images=/data/x)")
        out[name.replace("-", "_")] = value
    return out


@contextlib.contextmanager
def stage_run(recipe, tracker, stage: str, tags: dict | None = None):
    """The context of one stage command: the output folder's lock, the stage's MLflow run with
    its tags and the recipe as params, and the stage ``Context`` (shards, manifest, backend)."""
    from ltscale.core.lock import output_lock
    from ltscale.stages.context import make_context

    with output_lock(recipe.output_dir):
        tracker.use_folder(recipe.output_dir)  # runs a killed process left open: KILLED
        with tracker.run(f"{recipe.name}/{stage}", tags={"ltscale.stage": stage}):
            ctx = make_context(recipe, tracker)
            tracker.set_tags(ctx.tags(stage) | (tags or {}))
            tracker.log_params(flatten(ctx.recipe.model_dump()))
            yield ctx
