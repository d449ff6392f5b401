"""The `ltscale` command."""

from __future__ import annotations

import argparse
import json
import sys

from ltscale.errors import LtscaleError


def _recipe(args):
    from ltscale.config import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source.path={args.data}")
    return load_recipe(args.recipe, overrides)


def _tracker(recipe, enabled: bool = True):
    from ltscale.launch.env import DistEnv
    from ltscale.track import MlflowTracker, NullTracker

    enabled = enabled and DistEnv.from_env().rank == 0  # only rank 0 of a launched job tracks
    return MlflowTracker(recipe.tracking.uri, recipe.tracking.experiment) if enabled else NullTracker()


def _source_tags(ref: str) -> dict[str, str]:
    """Lineage: ``--from`` given as an MLflow run id names the run this one starts from."""
    from pathlib import Path

    return {} if Path(ref).exists() or "/" in ref else {"ltscale.source_run": ref}


def flatten(d: dict) -> dict:
    from ltscale.config import flatten as _flatten

    return _flatten(d)


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise LtscaleError(f"--option {pair!r}: use NAME=VALUE (e.g. --option images=/data/x)")
        out[name.replace("-", "_")] = value
    return out


def cmd_data_build(args):
    import os

    from ltscale.data.shards import build_shards, parse_size
    from ltscale.data.sources import open_source

    source = open_source(args.kind, args.path, **_options(args.option))
    index = build_shards(source, args.out, source_kind=args.kind, source_path=args.path,
                         shard_bytes=parse_size(args.shard_size),
                         workers=args.workers or min(8, os.cpu_count() or 1),
                         overwrite=args.overwrite, progress=True)
    counts = ", ".join(f"{s} {len(index.split_ids(s))}" for s in index.splits)
    print(f"wrote {len(index)} samples ({counts}) in {len(index.shards)} shards to {args.out} "
          f"(index {index.content_hash()})")


def cmd_data_verify(args):
    from ltscale.data.verify import verify_dataset

    report = verify_dataset(args.dir, deep=args.deep)
    for problem in report.problems[:args.max_problems]:
        print(problem)
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more problems")
    what = f"{report.samples} samples in {report.shards} shards"
    if args.deep:
        what += f", {report.decoded} images decoded"
    if report.ok:
        print(f"ok: {what}")
        return 0
    print(f"FAILED: {len(report.problems)} problems in {what}")
    return 1


def cmd_manifest_make(args):
    from ltscale.data.index import ShardIndex
    from ltscale.data.manifest import build_manifest
    from ltscale.data.manifest_spec import (EvalSelection, ImbalanceSpec, ManifestSpec,
                                            NoiseSpec, UnlabeledSpec)

    spec = ManifestSpec(
        split=args.split, imbalance=ImbalanceSpec.parse(args.imbalance, order=args.class_order),
        noise=NoiseSpec.parse(args.noise), seed=args.seed, max_per_class=args.max_per_class,
        few_labels=args.few_labels,
        unlabeled=UnlabeledSpec(multiple=args.unlabeled_multiple, ratio=args.unlabeled_ratio,
                                relevance=args.relevance, ood_split=args.ood_split,
                                split=args.unlabeled_split),
        val=EvalSelection.parse(args.val), test=EvalSelection.parse(args.test))
    m = build_manifest(ShardIndex.load(args.shards), spec)
    m.save(args.out)
    roles = ", ".join(f"{r} {n}" for r, n in m.header["role_counts"].items() if n)
    print(f"manifest {m.hash}: {roles}; noise rate {m.header['noise_rate']:.4f} -> {args.out}")


def cmd_manifest_stats(args):
    from ltscale.data.manifest import Manifest
    from ltscale.data.manifest_stats import format_stats, manifest_stats

    stats = manifest_stats(Manifest.load(args.manifest))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


def cmd_manifest_diff(args):
    from ltscale.data.manifest import Manifest
    from ltscale.data.manifest_stats import format_diff, manifest_diff

    diff = manifest_diff(Manifest.load(args.a), Manifest.load(args.b))
    print(json.dumps(diff, indent=2) if args.json else format_diff(diff))


def cmd_bench(args):
    if args.bench_command == "manifest":
        from ltscale.bench.manifest import bench_manifest

        result = bench_manifest(args.samples, args.classes, args.imbalance, args.noise, args.repeats)
    elif args.bench_command == "loader":
        from ltscale.bench.loader import bench_loader

        result = bench_loader(args.images, args.width, args.height, args.size, args.batch,
                              args.workers, args.repeats, dali=not args.no_dali)
    elif args.bench_command == "train":
        from ltscale.bench.train import bench_train

        result = bench_train(args.images, args.size, args.backbone, args.method, args.batch,
                             args.steps, args.epochs, args.precision, args.device,
                             args.workers, tuple(args.loaders.split(",")))
        if not args.json:
            for name, r in result["loaders"].items():
                print(f"{name:6s} " + (r["skipped"] if "skipped" in r else
                      f"{r['images_per_s']:9.1f} images/s, data wait "
                      f"{100 * r['data_wait_fraction']:4.1f} %, peak {r['peak_memory_mb']:.0f} MB"))
    elif args.bench_command == "step":
        from ltscale.bench.step import bench_step

        result = bench_step(args.method, args.backbone, args.batch, args.size, args.steps,
                            args.repeats, args.threads)
    else:
        from ltscale.bench.build import bench_build

        result = bench_build(args.images, args.classes, args.size, args.workers,
                             args.shard_size << 20, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))


def cmd_pretrain(args):
    from ltscale.stages.context import make_context
    from ltscale.stages.pretrain import run_pretrain

    recipe = _recipe(args)
    tracker = _tracker(recipe, not args.no_track)
    with tracker.run(f"{recipe.name}/pretrain", tags={"ltscale.stage": "pretrain"}):
        ctx = make_context(recipe, tracker)
        tracker.set_tags(ctx.tags("pretrain"))
        tracker.log_params(flatten(recipe.model_dump()))
        result = run_pretrain(ctx)
    if ctx.backend.is_main:
        print(f"encoder written to {result['encoder']}")


def cmd_finetune(args):
    from ltscale.resolve import resolve_artifact
    from ltscale.stages.context import make_context
    from ltscale.stages.evaluate import evaluate_logits
    from ltscale.stages.finetune import run_finetune
    from ltscale.stages.pretrain import load_encoder

    recipe = _recipe(args)
    encoder_path = resolve_artifact(args.source, "encoder", recipe.tracking.uri)
    # refuse an encoder made for another backbone / channel count before any data work
    load_encoder(encoder_path, recipe.pretrain.backbone.name, recipe.data.channels)
    tracker = _tracker(recipe, not args.no_track)
    with tracker.run(f"{recipe.name}/finetune", tags={"ltscale.stage": "finetune"}):
        ctx = make_context(recipe, tracker)
        tracker.set_tags(ctx.tags("finetune") | {"ltscale.encoder": str(encoder_path)}
                         | _source_tags(args.source))
        tracker.log_params(flatten(recipe.model_dump()))
        result = run_finetune(ctx, encoder_path, "finetune")
        metrics = evaluate_logits(ctx, result["logits"], result["targets"])
    stage = recipe.finetune.classifier_stage
    print(f"head ({recipe.finetune.mode}{'' if stage == 'none' else ' + ' + stage}) written to "
          f"{result['head']}; test top-1 {metrics['top1']:.4f}")


def cmd_bench_finetune(args):
    from ltscale.bench.finetune import bench_finetune

    result = bench_finetune(images=args.images, classes=args.classes, size=args.size,
                            epochs=args.epochs, batch_size=args.batch, backbone=args.backbone,
                            aug_copies=args.aug_copies, workers=args.workers)
    if args.json:
        print(json.dumps(result, indent=2))


def cmd_eval(args):
    import torch

    from ltscale.engine.checkpoint import load_checkpoint
    from ltscale.errors import CheckpointError
    from ltscale.eval.report import write_report
    from ltscale.resolve import resolve_artifact
    from ltscale.stages.context import make_context
    from ltscale.stages.evaluate import evaluate_logits
    from ltscale.stages.finetune import head_from_file
    from ltscale.stages.loaders import test_loader
    from ltscale.stages.pretrain import load_encoder
    from ltscale.engine.features import encode

    recipe = _recipe(args)
    head_path = resolve_artifact(args.source, "head", recipe.tracking.uri)
    encoder_ref = load_checkpoint(head_path).get("encoder")
    if not encoder_ref:
        raise CheckpointError(f"{head_path} does not name the encoder it was trained on")
    tracker = _tracker(recipe, not args.no_track)
    with tracker.run(f"{recipe.name}/eval", tags={"ltscale.stage": "eval"}):
        ctx = make_context(recipe, tracker)
        tracker.set_tags(ctx.tags("eval") | {"ltscale.head": str(head_path)}
                         | _source_tags(args.source))
        tracker.log_params(flatten(recipe.model_dump()))
        encoder = load_encoder(encoder_ref).to(ctx.device)
        feats, targets = encode(encoder, test_loader(ctx), ctx.device)
        with torch.no_grad():
            logits = head_from_file(head_path, ctx.index.num_classes)(feats)
        metrics = evaluate_logits(ctx, logits, targets)
        paths = write_report(ctx.out / "eval_report", f"ltscale eval: {recipe.name}",
                             {str(head_path): metrics}, ctx.index.classes,
                             ctx.manifest.reference_counts().tolist(), {"head": str(head_path)})
        for p in paths.values():
            tracker.log_artifact(p, "report")
    print(paths["md"].read_text())


def cmd_run(args):
    from ltscale.sweep import expand

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source.path={args.data}")
    points = expand(args.recipe, overrides)  # every sweep point validated before any work
    shared: dict = {}  # label-free pretrainings, reused by later points on the same images
    for i, (point, recipe) in enumerate(points):
        if point:
            print(f"sweep point {i + 1}/{len(points)}: "
                  + ", ".join(f"{k}={v}" for k, v in point.items()))
        _run_one(recipe, args, shared)


def _run_one(recipe, args, shared: dict | None = None):
    from ltscale.pipeline import run_pipeline
    from ltscale.track import default_tracking_uri

    tracker = _tracker(recipe, not args.no_track)
    summary = run_pipeline(recipe, tracker, shared=shared)
    uri = recipe.tracking.uri or default_tracking_uri()
    print()
    print(summary["table"])
    print()
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings"].items()))
    print(f"report: {summary['report']}")
    if not args.no_track:
        print(f"MLflow parent run {summary['parent_run_id']} in {uri}")
        print(f"browse it with: mlflow ui --backend-store-uri {uri}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltscale", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build WebDataset shards from a raw dataset")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="raw dataset → shards + index + dataset card")
    b.add_argument("kind", help="source kind: idx, cifar10, cifar100, imagefolder, imagenet_lt, "
                   "places_lt, inat2017, inat2018, inat2019, clothing1m, webdataset")
    b.add_argument("path")
    b.add_argument("--out", required=True)
    b.add_argument("--shard-size", default="1GB", help="target bytes per shard (e.g. 1GB, 64MB)")
    b.add_argument("--workers", type=int, default=0, help="parallel shard writers "
                   "(default: CPU count, at most 8)")
    b.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="source option, e.g. images=/data/imagenet (repeatable)")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=cmd_data_build)
    v = dsub.add_parser("verify", help="check shard checksums and every index entry")
    v.add_argument("dir")
    v.add_argument("--deep", action="store_true", help="also decode every image")
    v.add_argument("--max-problems", type=int, default=50)
    v.set_defaults(func=cmd_data_verify)

    man = sub.add_parser("manifest", help="make and inspect manifests")
    msub = man.add_subparsers(dest="manifest_command", required=True)
    mk = msub.add_parser("make", help="imbalance, noise, roles over a shard index")
    mk.add_argument("shards")
    mk.add_argument("--split", default="train", help="split the labeled set comes from")
    mk.add_argument("--imbalance", default="none",
                    help="none | natural | exp:GAMMA | step:GAMMA[:MU] | pareto:GAMMA[:ALPHA]")
    mk.add_argument("--class-order", default="index", choices=["index", "perm"],
                    help="head classes by class index or a seeded permutation")
    mk.add_argument("--noise", default="none", help="none | sym:RATE[:all|others] | "
                    "asym:RATE:cifar10|cifar100|MAP.json | real")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--max-per-class", type=int, default=None, help="n_max (default: the "
                    "smallest class of the split)")
    mk.add_argument("--few-labels", type=float, default=None, metavar="FRACTION",
                    help="keep this fraction of labels per class (at least one); the rest "
                    "become unlabeled")
    mk.add_argument("--unlabeled-multiple", type=float, default=0.0, metavar="M",
                    help="add an unlabeled pool of M x the labeled set")
    mk.add_argument("--unlabeled-ratio", type=float, default=1.0, metavar="RHO_U",
                    help="imbalance ratio of the unlabeled pool (exp profile)")
    mk.add_argument("--relevance", type=float, default=1.0,
                    help="share of the pool from in-distribution classes")
    mk.add_argument("--ood-split", default=None, help="split that supplies out-of-distribution "
                    "pool images")
    mk.add_argument("--unlabeled-split", default=None, help="split the in-distribution pool "
                    "comes from (default: --split, never reusing labeled samples)")
    mk.add_argument("--val", default=None, metavar="SPLIT[:PER_CLASS]",
                    help="balanced validation selection")
    mk.add_argument("--test", default=None, metavar="SPLIT[:PER_CLASS]",
                    help="balanced test selection")
    mk.add_argument("--out", required=True)
    mk.set_defaults(func=cmd_manifest_make)
    st = msub.add_parser("stats", help="class counts, shot groups and noise of a manifest")
    st.add_argument("manifest")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_manifest_stats)
    df = msub.add_parser("diff", help="how manifest B differs from A")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_manifest_diff)

    bench = sub.add_parser("bench", help="throughput and memory benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bm = bsub.add_parser("manifest", help="manifest make on a large synthetic index")
    bm.add_argument("--samples", type=int, default=1_000_000)
    bm.add_argument("--classes", type=int, default=1000)
    bm.add_argument("--imbalance", default="exp:100")
    bm.add_argument("--noise", default="sym:0.4")
    bm.add_argument("--repeats", type=int, default=3)
    bb = bsub.add_parser("build", help="data build vs a plain tarfile copy of the same JPEGs")
    bb.add_argument("--images", type=int, default=4000)
    bb.add_argument("--classes", type=int, default=40)
    bb.add_argument("--size", type=int, default=256, help="image side in pixels")
    bb.add_argument("--workers", type=int, default=0)
    bb.add_argument("--shard-size", type=int, default=16, help="MB per shard")
    bb.add_argument("--repeats", type=int, default=3)
    bl = bsub.add_parser("loader", help="input pipeline: torch/DALI backends vs ImageFolder, "
                         "bytes read, shard read speed, views, workers, shuffle quality, memory")
    bl.add_argument("--images", type=int, default=600)
    bl.add_argument("--width", type=int, default=500, help="JPEG width in pixels")
    bl.add_argument("--height", type=int, default=375, help="JPEG height in pixels")
    bl.add_argument("--size", type=int, default=224, help="view size in pixels")
    bl.add_argument("--batch", type=int, default=32)
    bl.add_argument("--workers", type=int, default=2)
    bl.add_argument("--repeats", type=int, default=2)
    bl.add_argument("--no-dali", action="store_true", help="skip the DALI CPU measurement")
    bs = bsub.add_parser("step", help="engine step time vs a bare PyTorch loop")
    bs.add_argument("--method", default="simsiam")
    bs.add_argument("--backbone", default="cifar_resnet20")
    bs.add_argument("--batch", type=int, default=64)
    bs.add_argument("--size", type=int, default=32, help="image side in pixels")
    bs.add_argument("--steps", type=int, default=30)
    bs.add_argument("--repeats", type=int, default=3)
    bs.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: torch's); 1 makes the CPU time immune to "
                         "threads spinning while another process holds a core")
    bt = bsub.add_parser("train", help="pretraining images/s per input pipeline (DALI, torch): "
                         "synthetic JPEG shards, the real stage, data-wait share, peak memory")
    bt.add_argument("--images", type=int, default=2048)
    bt.add_argument("--size", type=int, default=224, help="view size in pixels")
    bt.add_argument("--backbone", default="resnet50")
    bt.add_argument("--method", default="simsiam")
    bt.add_argument("--batch", type=int, default=128)
    bt.add_argument("--steps", type=int, default=12, help="steps per epoch")
    bt.add_argument("--epochs", type=int, default=2, help="the last epoch is reported")
    bt.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    bt.add_argument("--device", default="auto")
    bt.add_argument("--workers", type=int, default=None, help="default: CPU cores - 1")
    bt.add_argument("--loaders", default="dali,torch")
    for b_ in (bm, bb, bl, bs, bt):
        b_.add_argument("--json", action="store_true")
        b_.set_defaults(func=cmd_bench)
    bf = bsub.add_parser("finetune", help="head training from the feature cache vs re-encoding "
                         "the images every epoch (synthetic images, tiny backbone, CPU)")
    bf.add_argument("--images", type=int, default=2000, help="training images")
    bf.add_argument("--classes", type=int, default=10)
    bf.add_argument("--size", type=int, default=28, help="image side in pixels")
    bf.add_argument("--epochs", type=int, default=10, help="head training epochs")
    bf.add_argument("--batch", type=int, default=256)
    bf.add_argument("--backbone", default="resnet_tiny")
    bf.add_argument("--aug-copies", type=int, default=0, help="augmented copies in the cache")
    bf.add_argument("--workers", type=int, default=0, help="loader workers for encoding")
    bf.add_argument("--json", action="store_true")
    bf.set_defaults(func=cmd_bench_finetune)

    for name, func, needs_from in (("pretrain", cmd_pretrain, False),
                                   ("finetune", cmd_finetune, True), ("eval", cmd_eval, True),
                                   ("run", cmd_run, False)):
        s = sub.add_parser(name, help=f"{name} stage from a recipe" if name != "run"
                           else "the whole pipeline from a recipe")
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
        if needs_from:
            s.add_argument("--from", dest="source", required=True, metavar="RUN_ID|PATH")
        s.add_argument("--data", help="folder of the raw dataset (sets data.source.path)")
        s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        s.set_defaults(func=func)
    from ltscale import cli_compare, cli_submit

    cli_submit.add_parser(sub)
    cli_compare.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also follow options (`finetune R --from X key=value`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return int(args.func(args) or 0)
    except LtscaleError as exc:
        print(f"ltscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
