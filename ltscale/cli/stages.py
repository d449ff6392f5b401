"""`ltscale pretrain | finetune | eval | run`: the stages of a recipe, and the whole pipeline."""

from __future__ import annotations

from ltscale.cli import common
from ltscale.core.lock import output_lock


def add_parser(sub) -> None:
    for name, func, needs_from in (("pretrain", cmd_pretrain, False),
                                   ("finetune", cmd_finetune, True), ("eval", cmd_eval, True),
                                   ("run", cmd_run, False), ("scratch", cmd_scratch, False)):
        s = sub.add_parser(name, help=_HELP.get(name, f"{name} stage from a recipe"))
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
        if needs_from:
            s.add_argument("--from", dest="source", required=True, metavar="RUN_ID|PATH")
        s.add_argument("--data", help="folder of the raw dataset (sets data.source.path)")
        s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        s.set_defaults(func=func)


_HELP = {"run": "the whole pipeline from a recipe",
         "scratch": "the recipe's from-scratch networks (baselines.ce_scratch) alone: trained, "
                    "evaluated and reported, without pretraining"}


def cmd_pretrain(args):
    from ltscale.stages.pretrain import run_pretrain

    recipe = common.recipe_from_args(args)
    tracker = common.tracker(recipe, not args.no_track)
    with common.stage_run(recipe, tracker, "pretrain") as ctx:
        result = run_pretrain(ctx)
    if ctx.backend.is_main:
        print(f"encoder written to {result.encoder}")


def cmd_finetune(args):
    from ltscale.models.files import load_encoder
    from ltscale.resolve import resolve_artifact
    from ltscale.stages.evaluate import evaluate_logits
    from ltscale.stages.finetune import run_finetune

    recipe = common.recipe_from_args(args)
    encoder_path = resolve_artifact(args.source, "encoder", recipe.tracking.uri)
    # refuse an encoder made for another backbone / channel count before any data work
    load_encoder(encoder_path, recipe.pretrain.backbone.name, recipe.data.channels)
    tracker = common.tracker(recipe, not args.no_track)
    with common.stage_run(recipe, tracker, "finetune", {"ltscale.encoder": str(encoder_path)}
                          | common.source_tags(args.source)) as ctx:
        result = run_finetune(ctx, encoder_path, "finetune")
        metrics = evaluate_logits(ctx, result.logits, result.targets)
    stage = recipe.finetune.classifier_stage
    print(f"head ({recipe.finetune.mode}{'' if stage == 'none' else ' + ' + stage}) written to "
          f"{result.head}; test top-1 {metrics['top1']:.4f}")


def cmd_eval(args):
    from ltscale.resolve import resolve_artifact
    from ltscale.stages.eval_head import check_head_fits, evaluate_head, head_encoder

    recipe = common.recipe_from_args(args)
    head_path = resolve_artifact(args.source, "head", recipe.tracking.uri)
    encoder_ref = head_encoder(head_path)  # refused before any work if it changed
    check_head_fits(head_path, encoder_ref, recipe.data)  # or was trained on another dataset
    tracker = common.tracker(recipe, not args.no_track)
    with common.stage_run(recipe, tracker, "eval", {"ltscale.head": str(head_path)}
                          | common.source_tags(args.source)) as ctx:
        _, paths = evaluate_head(ctx, head_path, encoder_ref)
        for p in paths.values():
            tracker.log_artifact(p, "report")
    print(paths["md"].read_text())


def cmd_scratch(args):
    cmd_run(args, scratch_only=True)


def cmd_run(args, scratch_only: bool = False):
    from ltscale.config.sweeps import expand
    from ltscale.core.errors import RecipeError

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source.path={args.data}")
    points = expand(args.recipe, overrides)  # every sweep point validated before any work
    for _, recipe in points:
        common.check_data_flag(recipe, getattr(args, "data", None))
        common.check_output_dir(recipe)
        common.check_device(recipe)
        if scratch_only and not recipe.baselines.ce_scratch.enabled:
            raise RecipeError("ltscale scratch trains the recipe's from-scratch networks, but "
                              "baselines.ce_scratch.enabled is false; set it to true")
    shared: dict = {}  # label-free pretrainings, reused by later points on the same images
    for i, (point, recipe) in enumerate(points):
        if point:
            print(f"sweep point {i + 1}/{len(points)}: "
                  + ", ".join(f"{k}={v}" for k, v in point.items()))
        _run_one(recipe, args, shared, scratch_only)


def _run_one(recipe, args, shared: dict | None = None, scratch_only: bool = False):
    from ltscale.pipeline import run_pipeline
    from ltscale.track import default_tracking_uri

    tracker = common.tracker(recipe, not args.no_track)
    with output_lock(recipe.output_dir):
        tracker.use_folder(recipe.output_dir)  # runs a killed process left open: KILLED
        summary = run_pipeline(recipe, tracker, shared=shared, scratch_only=scratch_only)
    uri = recipe.tracking.uri or default_tracking_uri()
    print()
    print(summary["table"])
    print()
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings"].items()))
    print(f"report: {summary['report']}")
    if not args.no_track:
        print(f"MLflow parent run {summary['parent_run_id']} in {uri}")
        print(f"browse it with: mlflow ui --backend-store-uri {uri}")
