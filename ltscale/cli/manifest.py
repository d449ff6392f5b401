"""`ltscale manifest make | stats | diff`: imbalance, noise and roles over a shard index."""

from __future__ import annotations

import json
import os


def add_parser(sub) -> None:
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
                    "asym:RATE:cifar10|cifar100|MAP.json | real | human:LABEL_SET:FILE "
                    "(CIFAR-N) | idn:RATE[:STD] (instance-dependent)")
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


def cmd_manifest_make(args):
    from ltscale.data.index import ShardIndex
    from ltscale.data.manifest import build_manifest
    from ltscale.data.manifest_spec import (
        EvalSelection,
        ImbalanceSpec,
        ManifestSpec,
        NoiseSpec,
        UnlabeledSpec,
    )

    spec = ManifestSpec(
        split=args.split, imbalance=ImbalanceSpec.parse(args.imbalance, order=args.class_order),
        noise=NoiseSpec.parse(args.noise), seed=args.seed, max_per_class=args.max_per_class,
        few_labels=args.few_labels,
        unlabeled=UnlabeledSpec(multiple=args.unlabeled_multiple, ratio=args.unlabeled_ratio,
                                relevance=args.relevance, ood_split=args.ood_split,
                                split=args.unlabeled_split),
        val=EvalSelection.parse(args.val), test=EvalSelection.parse(args.test))
    index = ShardIndex.load(args.shards)
    noise_file = {"asym": spec.noise.mapping, "human": spec.noise.file}.get(spec.noise.kind)
    check_manifest_output(args.out, index, [args.shards, *([noise_file] if noise_file else [])])
    m = build_manifest(index, spec)
    m.save(args.out)
    roles = ", ".join(f"{r} {n}" for r, n in m.header["role_counts"].items() if n)
    print(f"manifest {m.hash}: {roles}; noise rate {m.header['noise_rate']:.4f} -> {args.out}")


def check_manifest_output(out: str, index, inputs) -> None:
    """A manifest is written only where no input lies: not inside (or over) the dataset folder,
    not over one of its shards (``webdataset`` shards live elsewhere) or another input, and not
    over an existing file that is not an ltscale manifest."""
    from pathlib import Path

    from ltscale.core.errors import ManifestError
    from ltscale.data.manifest import Manifest
    from ltscale.data.ownership import check_output_path

    root = index.root
    shards = [Path(s) if Path(s).is_absolute() else root / s for s in index.shards]
    files = [root / "index.npz", root / "card.json"] if root is not None else []
    try:  # the raw source the dataset was built from is an input too (webdataset: the tars)
        source = json.loads((root / "card.json").read_text())["source"]["path"]
        inputs = [*inputs, source]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for given in [*files, *shards, *inputs]:
        check_output_path(out, [given], "--out")
    resolved = Path(os.path.realpath(out))
    if root is not None and resolved.is_relative_to(Path(os.path.realpath(root))):
        raise ManifestError(f"--out {out} lies inside the dataset {root}; write the manifest "
                            "outside it (nothing was changed)")
    path = Path(out)
    if path.is_dir():
        raise ManifestError(f"--out {out} is a folder; name the manifest file (e.g. "
                            f"{Path(out) / 'train.manifest.npz'})")
    if path.exists():
        try:
            Manifest.load(path)
        except ManifestError:
            raise ManifestError(f"--out {out} exists and is not an ltscale manifest; ltscale "
                                "only replaces a manifest it wrote. Choose another --out "
                                "(nothing was changed)") from None


def cmd_manifest_stats(args):
    from ltscale.data.manifest import Manifest
    from ltscale.data.manifest_stats import dataset_index, format_stats, manifest_stats

    m = Manifest.load(args.manifest)
    stats = manifest_stats(m, *dataset_index(m))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


def cmd_manifest_diff(args):
    from ltscale.data.manifest import Manifest
    from ltscale.data.manifest_stats import format_diff, manifest_diff

    diff = manifest_diff(Manifest.load(args.a), Manifest.load(args.b))
    print(json.dumps(diff, indent=2) if args.json else format_diff(diff))
