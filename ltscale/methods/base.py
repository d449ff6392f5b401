"""The contract between a pretraining method and the engine and stages.

A method is an ``nn.Module`` that holds its ``encoder`` (and heads) and whose ``forward(batch)``
returns a dict with a scalar ``loss`` (plus monitors such as ``z_std``). ``PretrainMethod`` states
the rest in one place, behaviour-free: class attributes the engine and stages read, and hooks that
do nothing unless a method overrides them.

Class attributes:

``views``               images per sample the augmentation must give (2; 4 for rotation)
``uses_labels``         trains on the manifest's labeled role only (label-aware methods)
``needs``               training-set facts passed to ``__init__`` (names from ``METHOD_INPUTS``)
``replicated_buffers``  buffers every rank updates alike, left out of DDP's broadcasts
``keep_fp32``           buffers or child modules stored fp32 under any precision (EMA targets,
                        queues, banks; ``engine/precision.py``)
``requires_previous``   the method whose stage must come right before this one's (FASSL)

Hooks: ``param_groups`` (what the optimizer steps; default every parameter), ``set_epoch``
(once per epoch, at its start: a run resumed inside an epoch restores the checkpoint over it),
``after_step`` (after each optimizer step: EMA targets, schedules), ``init_from`` (a stage takes
over what it needs of the previous stage's method, beyond the encoder weights).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class PretrainMethod(nn.Module):
    views: ClassVar[int] = 2
    uses_labels: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    replicated_buffers: ClassVar[tuple[str, ...]] = ()
    keep_fp32: ClassVar[tuple[str, ...]] = ()
    requires_previous: ClassVar[str | None] = None

    encoder: nn.Module

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (a group may set ``fixed_lr``)."""
        return [{"params": list(self.parameters())}]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Start of epoch ``epoch`` (0-based) of ``epochs``."""

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (0-based) of ``total_steps``."""

    def init_from(self, previous: nn.Module) -> None:
        """Take over what this method needs of the previous stage's method (whose encoder
        weights the stage has already copied)."""
