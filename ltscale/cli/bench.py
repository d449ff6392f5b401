"""`ltscale bench …`: throughput and memory benchmarks."""

from __future__ import annotations

import json


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


def cmd_bench_finetune(args):
    from ltscale.bench.finetune import bench_finetune

    result = bench_finetune(images=args.images, classes=args.classes, size=args.size,
                            epochs=args.epochs, batch_size=args.batch, backbone=args.backbone,
                            aug_copies=args.aug_copies, workers=args.workers)
    if args.json:
        print(json.dumps(result, indent=2))
