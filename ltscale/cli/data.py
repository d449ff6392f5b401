"""`ltscale data build | verify`: raw datasets to shards, and their checks."""

from __future__ import annotations

import os

from ltscale.cli import common
from ltscale.core.errors import LtscaleError


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="build WebDataset shards from a raw dataset")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="raw dataset → shards + index + dataset card")
    from ltscale.data.sources import source_kinds  # torch-free: the adapters' registry

    b.add_argument("kind", help=f"source kind: {', '.join(source_kinds())}")
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


def cmd_data_build(args):
    from ltscale.data.ownership import check_output_path
    from ltscale.data.shards import build_shards, parse_size
    from ltscale.data.sources import open_source

    if args.workers < 0:
        raise LtscaleError(f"--workers {args.workers}: use 0 (one per CPU, at most 8) or a "
                           "positive number of writers")
    options = common.options(args.option)
    source = open_source(args.kind, args.path, **options)
    # option values that name files or folders are inputs too: --out may not touch them
    inputs = [v for v in options.values() if v and os.path.exists(v)]
    check_output_path(args.out, [args.path, *inputs], "--out")
    shard_bytes = parse_size(args.shard_size)
    index = build_shards(source, args.out, source_kind=args.kind, source_path=args.path,
                         shard_bytes=shard_bytes,
                         workers=args.workers or min(8, os.cpu_count() or 1),
                         overwrite=args.overwrite, progress=True, inputs=inputs)
    counts = ", ".join(f"{s} {len(index.split_ids(s))}" for s in index.splits)
    print(f"wrote {len(index)} samples ({counts}) in {len(index.shards)} shards to {args.out} "
          f"(index {index.content_hash()})")


def cmd_data_verify(args):
    from ltscale.data.verify import verify_dataset

    if args.max_problems < 0:
        raise LtscaleError(f"--max-problems {args.max_problems}: must be 0 or more")
    report = verify_dataset(args.dir, deep=args.deep)
    for note in report.notes:
        print(f"note: {note}")
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
