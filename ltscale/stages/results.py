"""What each stage returns, as typed records instead of dicts read by string keys.

``history`` is the engine loop's per-epoch records (``LoopState.history``); metrics stay dicts
of metric name → value, since their names are the MLflow keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Budget:
    """What training a model cost (see ``stages/budget.py``): images seen, optimizer steps and
    wall-clock seconds, summed over the stages that trained it."""
    images: int = 0
    steps: int = 0
    seconds: float = 0.0

    def __add__(self, other: "Budget") -> "Budget":
        return Budget(self.images + other.images, self.steps + other.steps,
                      self.seconds + other.seconds)

    def as_metrics(self) -> dict[str, float]:
        return {"budget/images": float(self.images), "budget/steps": float(self.steps),
                "budget/seconds": float(self.seconds)}


@dataclass
class TrainResult:
    """A model trained by the engine loop: a pretraining stage or the CE-from-scratch
    baseline. ``encoder`` is the exported ``encoder.pt``; ``checkpoint`` the last checkpoint;
    ``method`` the trained module (None in a sweep's record of a reused pretraining)."""
    method: nn.Module | None
    history: list[dict]
    seconds: float
    encoder: Path
    checkpoint: Path | None = None
    budget: Budget = field(default_factory=lambda: Budget())  # all the stages that made it

    @property
    def last_epoch(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class FinetuneResult:
    """A trained head (``head.pt``) and its test-set logits. ``confidence`` is SuperLoss's σ*
    per labeled training sample (None for the other losses); ``encoder`` the encoder file the
    head sits on (None for a module that was never saved, e.g. the random-encoder baseline)."""
    head: Path
    logits: torch.Tensor
    targets: torch.Tensor
    history: list[dict]
    mode: str
    encoder: Path | None = None
    confidence: np.ndarray | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    test_cache: object = None   # finetune.cache.FeatureCache of the test split (feature map)


@dataclass
class SelfTrainResult:
    """The self-training student (its report name, test logits) and what it learnt from."""
    name: str
    logits: torch.Tensor
    targets: torch.Tensor
    method: nn.Module
    teacher: str
    pseudo: object          # finetune.selftrain.PseudoLabels
    train_set: object       # finetune.selftrain.TrainingSet
    metrics: dict[str, float]
    history: list[dict]
    budget: Budget = field(default_factory=lambda: Budget())  # teacher + student


@dataclass
class Teacher:
    """What the self-training stage learns from: a model with ``logits``, its name in the
    report and what training it cost (the pipeline builds it from the fine-tuning stage's or the
    from-scratch baseline's result)."""
    model: nn.Module
    name: str
    budget: Budget = field(default_factory=lambda: Budget())
