"""The cells of the correctness matrix, read from ltscale's registries: every pretraining method a
recipe can name × every execution backend × every precision. A new method, backend or precision
joins the matrix without an edit here.

Sizes are shrunk by option *name* (any method with a ``proj_dim`` gets a 32-wide projector, and
so on), not per method, so a new method runs at its own defaults where no rule applies."""

from __future__ import annotations

import os
import typing
from pathlib import Path

from ltscale.config.pretrain import PretrainCfg
from ltscale.config.schema import EngineCfg
from ltscale.data.augment import make_preset, preset_names
from ltscale.engine.backend import PRECISIONS
from ltscale.methods import method_class

# option name → the tiny value (seconds-long runs on a CPU); SBCL-style schedules start at once
TINY = {"proj_dim": 32, "pred_dim": 16, "out_dim": 16, "queue_size": 4096, "prototypes": 8,
        "k": 2, "delta": 2, "warmup_epochs": 0, "update_every": 1, "cluster_iters": 2}

RANKS = {"local": 1}  # processes per backend; every other backend runs on 2 ranks
EPOCHS, STEPS_PER_EPOCH, BATCH = 2, 3, 8
SIZE = 16


def _method_cfgs() -> dict:
    """name → options class of every method ``pretrain.method.name`` accepts (the schema's
    union of method configs)."""
    union = PretrainCfg.model_fields["method"].annotation
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return {c.model_fields["name"].default: c for c in typing.get_args(union)}


def method_names() -> list[str]:
    return sorted(_method_cfgs())


def method_cfg(name: str) -> dict:
    cfg = _method_cfgs()[name]
    return {"name": name} | {k: v for k, v in TINY.items() if k in cfg.model_fields}


def backend_names() -> list[str]:
    return [b for b in typing.get_args(EngineCfg.model_fields["backend"].annotation)
            if b != "auto"]


def precisions() -> list[str]:
    return list(PRECISIONS)


def device() -> str:
    """Where the worker trains: ``cpu`` (CI) or ``cuda`` (``MATRIX_DEVICE``, the gpu tier)."""
    return os.environ.get("MATRIX_DEVICE", "cpu")


def ranks(backend: str) -> int:
    n = RANKS.get(backend, 2)
    if device() == "cuda":  # NCCL takes one rank per GPU
        import torch

        n = min(n, max(1, torch.cuda.device_count()))
    return n


# Methods killed and resumed on the multi-rank backends. A method's own state (EMA targets,
# queues, banks, masks, clusters) is checkpointed the same way on every backend, and the single-
# rank backend kills every method; what a multi-rank backend adds (per-rank RNG, the sampler's
# position, DDP buffers, ZeRO's partitioned optimizer state) is method-independent, so these
# cover it with each kind of method state: a queue + EMA + shuffled BN (moco), an EMA target
# (byol), pruning masks set at epoch start (sdclr), a clustered bank (sbcl). Each further method
# costs one more process start per backend (~10 s) in CI.
MULTI_RANK_RESUME = ("byol", "moco", "sbcl", "sdclr")


def resume_methods(backend: str) -> list[str]:
    """The methods whose SIGKILL + relaunch the matrix checks on ``backend``."""
    if ranks(backend) == 1:
        return method_names()
    return [m for m in method_names() if m in MULTI_RANK_RESUME]


def preset_for(views: int) -> str:
    """The first augmentation preset that gives ``views`` images per sample."""
    return next(p for p in preset_names() if make_preset(p, SIZE, 3).outputs == views)


def pretrain_section(method: str) -> dict:
    cls = method_class(method)
    stage = {"epochs": EPOCHS, "batch_size": BATCH, "max_steps_per_epoch": STEPS_PER_EPOCH,
             "augment": {"preset": preset_for(cls.views)},
             "optim": {"name": "sgd", "lr": 0.05, "scale_lr": False, "warmup_epochs": 0.5}}
    previous = getattr(cls, "requires_previous", None)
    if previous is None:
        return stage | {"method": method_cfg(method)}
    first = stage | {"name": previous, "method": method_cfg(previous),
                     "augment": {"preset": preset_for(method_class(previous).views)}}
    return {"stages": [first, stage | {"name": method, "method": method_cfg(method)}]}


def recipe_dict(data: Path, out: Path, backend: str, precision: str, method: str) -> dict:
    return {
        "name": f"matrix-{method}", "output_dir": str(out), "device": device(), "seed": 0,
        "data": {"source": {"kind": "imagefolder", "path": str(data / "images")},
                 "shards": str(data / "shards"), "image_size": SIZE, "channels": 3,
                 "mean": [0.5] * 3, "std": [0.25] * 3},
        "engine": {"backend": backend, "precision": precision, "channels_last": True,
                   "compile": os.environ.get("MATRIX_COMPILE") == "1", "timeout_s": 120},
        "pretrain": {"backbone": {"name": "resnet_tiny"}, "workers": 0, "checkpoint_every": 2,
                     "keep_checkpoints": 3,
                     "knn": {"bank_per_class": 4, "queries": 12, "k": 5}}
        | pretrain_section(method),
        "finetune": {"epochs": 1, "batch_size": 8, "workers": 0},
        "baselines": {"random_encoder": False, "ce_scratch": {"enabled": False}},
    }
