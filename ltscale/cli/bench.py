"""`ltscale bench …`: throughput and memory benchmarks."""

from __future__ import annotations

import contextlib
import json
import sys

from ltscale.core.errors import LtscaleError


def _tables_to_stderr(args):
    """With ``--json`` stdout carries only the JSON: the benchmarks' own tables go to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def add_parser(sub) -> None:
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
    bt = bsub.add_parser("train", help="pretraining images/s per input pipeline (DALI, torch, "
                         "torch with GPU decoding): synthetic JPEG shards, the real stage, "
                         "data-wait share, peak memory")
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
    bt.add_argument("--loaders", default="dali,torch,torch-gpu",
                    help="comma-separated input pipelines: dali, torch (Pillow in the workers), "
                         "torch-gpu (torch backend, data.loader.decode=gpu)")
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
    bp = bsub.add_parser("baseline", help="ltscale's from-scratch network vs a plain PyTorch "
                         "script on the same manifests: same settings, and the script's own")
    bp.add_argument("recipe", nargs="?", default="recipes/baselines/fashion_mnist_resnet18.yaml")
    bp.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
    bp.add_argument("--draws", default="0,1,2", metavar="S,S,…",
                    help="manifest.seed values: one manifest draw each (default 0,1,2)")
    bp.add_argument("--seeds", default=None, metavar="S,S,…",
                    help="training seeds (the recipe's seed): each draw is run once per seed "
                         "(default: the recipe's seed)")
    bp.add_argument("--networks", default="ltscale,same,plain",
                    help="which of ltscale, same (the script at ltscale's settings), plain (the "
                         "script's own) to train")
    bp.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_bench_baseline)
    sc = bsub.add_parser("scale", help="every stage at fractions of ImageNet-LT / iNat-2018 / "
                         "ImageNet-1k-shaped synthetic data: time, peak memory, growth exponent")
    sc.add_argument("--datasets", default="imagenet_lt,inat2018,imagenet1k")
    sc.add_argument("--sizes", default=None, metavar="F,F,…",
                    help="fractions of each dataset (default 0.1,0.3,1; --quick: 0.005,0.01)")
    sc.add_argument("--stages", default=None, help="comma-separated subset (default: all)")
    sc.add_argument("--max-images", type=int, default=None,
                    help="largest size for the stages on real JPEG shards (default 50000)")
    sc.add_argument("--steps", type=int, default=4, help="pretraining steps in the timed epoch")
    sc.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1, immune to a busy shared machine; "
                         "0: torch's default)")
    sc.add_argument("--quick", action="store_true", help="tiny fractions: a smoke run")
    sc.add_argument("--out", default=None, metavar="FILE", help="also write the tables (Markdown)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_bench_scale)


def cmd_bench(args):
    with _tables_to_stderr(args):
        result = _run_bench(args)
    if args.json:
        print(json.dumps(result, indent=2))


def _run_bench(args) -> dict:
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
                print(f"{name:9s} " + (r["skipped"] if "skipped" in r else
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
    return result


def cmd_bench_finetune(args):
    from ltscale.bench.finetune import bench_finetune

    with _tables_to_stderr(args):
        result = bench_finetune(images=args.images, classes=args.classes, size=args.size,
                                epochs=args.epochs, batch_size=args.batch, backbone=args.backbone,
                                aug_copies=args.aug_copies, workers=args.workers)
    if args.json:
        print(json.dumps(result, indent=2))


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise LtscaleError(f"{flag} {text}: expected comma-separated integers") from None


def cmd_bench_baseline(args):
    from ltscale.bench.baseline import bench_baseline

    draws = _ints("--draws", args.draws)
    seeds = None if args.seeds is None else _ints("--seeds", args.seeds)
    networks = tuple(n.strip() for n in args.networks.split(",") if n.strip())
    with _tables_to_stderr(args):
        result = bench_baseline(args.recipe, list(args.overrides), draws, args.threads,
                                seeds=seeds, networks=networks)
    if args.json:
        print(json.dumps(result, indent=2))


def cmd_bench_scale(args):
    from pathlib import Path

    from ltscale.bench.scale import (
        DEFAULT_FRACTIONS,
        DEFAULT_MAX_IMAGES,
        QUICK_FRACTIONS,
        STAGES,
        bench_scale,
        markdown,
    )

    fractions = (tuple(float(f) for f in args.sizes.split(",")) if args.sizes
                 else QUICK_FRACTIONS if args.quick else DEFAULT_FRACTIONS)
    if any(not 0 < f <= 1 for f in fractions):
        raise LtscaleError(f"--sizes {args.sizes}: fractions must lie in (0, 1]")
    try:
        result = bench_scale(datasets=tuple(args.datasets.split(",")), fractions=fractions,
                             stages=tuple(args.stages.split(",")) if args.stages else tuple(STAGES),
                             max_images=args.max_images or DEFAULT_MAX_IMAGES, quick=args.quick,
                             steps=args.steps, threads=args.threads or None, log=(lambda _: None) if args.json else print)
    except ValueError as exc:
        raise LtscaleError(str(exc)) from None
    table = markdown(result)
    if args.out:
        Path(args.out).write_text(table)
    print(json.dumps(result, indent=2) if args.json else "\n" + table)
