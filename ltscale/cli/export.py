"""`ltscale export`: a pretrained encoder as a torchvision state dict and/or ONNX, each file
loaded back and checked against the encoder before it is put in place (``ltscale.export``)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    ep = sub.add_parser("export", help="a pretrained encoder as a torchvision state dict / ONNX, "
                        "verified against the encoder")
    ep.add_argument("source", metavar="RUN_ID|PATH",
                    help="encoder.pt, a pretrain stage folder, or a pretrain run id")
    ep.add_argument("--format", nargs="+", default=None, choices=["torchvision", "onnx"],
                    help="default: torchvision when the encoder is torchvision's own network "
                    "(ImageNet stem, 3 channels), and onnx")
    ep.add_argument("--out", metavar="DIR", help="output folder (default: export/ beside the "
                    "encoder file)")
    ep.add_argument("--image-size", type=int, default=None, metavar="N",
                    help="side of the random verification images (default: 32 for the CIFAR "
                    "stem and CIFAR ResNets, else 224)")
    ep.add_argument("--atol", type=float, default=None,
                    help="allowed max abs feature difference, times max(1, max |feature|) "
                    "(default 1e-4)")
    ep.add_argument("--force", action="store_true",
                    help="replace files in --out that ltscale did not write (by default only "
                    "files listed in the folder's .ltscale-written.json are replaced)")
    ep.add_argument("--tracking-uri", default=None,
                    help="for a run id: default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ep.set_defaults(func=cmd_export)
    return ep


def cmd_export(args) -> int:
    from ltscale.export import ATOL, export_encoder
    from ltscale.resolve import resolve_artifact

    source = resolve_artifact(args.source, "encoder", args.tracking_uri)
    export_encoder(source, args.out, tuple(args.format) if args.format else None,
                   image_size=args.image_size, atol=ATOL if args.atol is None else args.atol,
                   force=args.force)
    return 0
