"""`ltscale bench train`: pretraining throughput end to end, per input pipeline.

Writes ``images`` synthetic JPEGs (``size`` + 32 px square, like resized photos) as ltscale
shards, then runs the real pretraining stage (SimSiam on a ResNet-50 in bf16 with channels-last
inputs by default) once per input pipeline — ``dali`` (``mixed`` nvJPEG decoding on a GPU, its CPU
pipeline otherwise), ``torch`` (Pillow in DataLoader workers) and ``torch-gpu`` (the torch backend
with ``data.loader.decode: gpu``: the workers hand over JPEG bytes, torchvision's nvJPEG batch
decoder and tensor ops make the views on the GPU; on a CPU device torchvision's CPU decoder in
the training process) — for ``epochs`` epochs of ``steps`` steps. The first epoch pays for start-up (cuDNN autotuning, DALI's pipeline build,
worker start), so the figures are the last epoch's: images/s, the share of the epoch spent waiting
for data, and peak device memory (CUDA: ``max_memory_allocated`` for that epoch; CPU: the
process's peak RSS).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ltscale.bench.synthetic import write_jpeg_folder
from ltscale.core.errors import LtscaleError

# pipeline name → data.loader (backend, decode)
LOADERS = {"dali": ("dali", "cpu"), "torch": ("torch", "cpu"), "torch-gpu": ("torch", "gpu")}


def _available(loader: str) -> bool:
    if loader != "dali":
        return True
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _decoder(loader: str, device: str) -> str:
    """What decoded the JPEGs of ``loader`` on ``device``."""
    if loader == "dali":
        return "mixed" if device == "cuda" else "cpu"
    if loader == "torch-gpu":
        return "nvjpeg" if device == "cuda" else "torchvision-cpu"
    return "pillow"


def train_recipe(root: Path, out: Path, loader: str, *, backbone: str, method: str, size: int,
                 batch: int, steps: int, epochs: int, precision: str, device: str, workers: int,
                 **sections):
    """The benchmark's pretraining recipe over ``root``/images (shards in ``root``/shards) for
    the input pipeline ``loader`` (a ``LOADERS`` name); ``sections``: further top-level recipe
    sections (e.g. ``finetune``)."""
    from ltscale.config.loading import recipe_from_dict

    backend, decode = LOADERS[loader]

    return recipe_from_dict({
        "name": f"bench-train-{loader}", "output_dir": str(out), "device": device,
        "data": {"source": {"kind": "imagefolder", "path": str(root / "images")},
                 "shards": str(root / "shards"), "image_size": size, "channels": 3,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "loader": {"backend": backend, "decode": decode, "check": "none"}},
        "manifest": {"imbalance": "none", "noise": "none"},
        "engine": {"precision": precision, "channels_last": True},
        "pretrain": {"method": {"name": method}, "epochs": epochs, "batch_size": batch,
                     "max_steps_per_epoch": steps, "workers": workers,
                     "backbone": {"name": backbone, "cifar_stem": size <= 64},
                     "augment": {"preset": "simclr"}, "knn": {"enabled": False},
                     "optim": {"warmup_epochs": 0}},
        "baselines": {"random_encoder": False, "ce_scratch": {"enabled": False}},
        **sections,
    })


def bench_train(images: int = 2048, size: int = 224, backbone: str = "resnet50",
                method: str = "simsiam", batch: int = 128, steps: int = 12, epochs: int = 2,
                precision: str = "bf16", device: str = "auto", workers: int | None = None,
                loaders: tuple[str, ...] = ("dali", "torch", "torch-gpu"),
                root: str | None = None) -> dict:
    import torch

    from ltscale.stages.context import make_context
    from ltscale.stages.pretrain import run_pretrain

    unknown = [name for name in loaders if name not in LOADERS]
    if unknown:
        raise LtscaleError(f"unknown --loaders entry {unknown[0]!r}; choose from "
                           f"{', '.join(LOADERS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = workers if workers is not None else max(1, (os.cpu_count() or 2) - 1)
    tmp = tempfile.TemporaryDirectory(prefix="ltscale-bench-train-") if root is None else None
    base = Path(root or tmp.name)
    t = time.perf_counter()
    if not (base / "images").exists():
        write_jpeg_folder(base / "images", images, 10, size=size + 32)
    result = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "images": images, "size": size, "backbone": backbone, "method": method,
              "batch": batch, "steps": steps, "epochs": epochs, "precision": precision,
              "workers": workers, "data_seconds": 0.0, "loaders": {}}
    for loader in loaders:
        if not _available(loader):
            result["loaders"][loader] = {"skipped": "NVIDIA DALI is not installed"}
            continue
        recipe = train_recipe(base, base / f"run-{loader}", loader, backbone=backbone, method=method,
                              size=size, batch=batch, steps=steps, epochs=epochs, precision=precision,
                              device=device, workers=workers)
        ctx = make_context(recipe, progress=False)  # builds the shards on first use
        result["data_seconds"] = result["data_seconds"] or time.perf_counter() - t
        out = run_pretrain(ctx)
        last = out.last_epoch
        result["loaders"][loader] = {
            "images_per_s": last["epoch/images_per_s"],
            "data_wait_fraction": last["epoch/data_wait_fraction"],
            "peak_memory_mb": last["epoch/peak_memory_mb"],
            "epoch_seconds": last["epoch/seconds"],
            "decode": _decoder(loader, device),
        }
        ctx.backend.close()
        del out, ctx
        if device == "cuda":
            torch.cuda.empty_cache()
    speeds = {k: v["images_per_s"] for k, v in result["loaders"].items() if "images_per_s" in v}
    for other in ("dali", "torch-gpu"):
        if {other, "torch"} <= set(speeds):
            result[f"{other.replace('-', '_')}_over_torch"] = speeds[other] / speeds["torch"]
    if tmp is not None:
        tmp.cleanup()
    return result
