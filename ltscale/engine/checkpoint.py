"""The ``CheckpointManager`` the training loop resumes and saves through (its retention, the RNG states
of every rank, runs of another experiment)."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ltscale.core.errors import CheckpointError
from ltscale.core.torch_file import (  # noqa: F401  (the checkpoint files, written atomically)
    CheckpointWriteError,
    load_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """``NAME-<step>.pt`` files beside ``checkpoint``, newest first."""
    checkpoint = Path(checkpoint)
    pattern = re.compile(re.escape(checkpoint.stem) + r"-(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in checkpoint.parent.glob(f"{checkpoint.stem}-*.pt")
             if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(checkpoint: Path) -> Path | None:
    files = checkpoint_files(checkpoint)
    return files[0] if files else None


def rng_state() -> dict:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())  # CPU byte tensors, wherever the file was mapped
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class CheckpointManager:
    """The checkpoints of one training run: ``NAME-<step>.pt`` files beside ``path`` (none when
    ``path`` is None), written through the backend, the newest ``keep`` kept.

    ``resume`` restores the newest readable checkpoint of the same experiment (``fingerprint``),
    skipping files cut short by a kill; a checkpoint of another experiment starts the run afresh
    and is replaced by the first save. ``save`` writes the model, optimizer, backend, sampler and
    loop state with every rank's RNG states, then applies the retention."""

    def __init__(self, path: Path | None, backend, fingerprint: str, *, keep: int = 2,
                 desc: str = "train"):
        self.path = Path(path) if path is not None else None
        self.backend, self.fingerprint, self.keep, self.desc = backend, fingerprint, keep, desc
        self.last_good: Path | None = None
        self.foreign: list[Path] = []  # another experiment's checkpoints, removed at first save

    def resume(self, model, optimizer, sampler,
               start_epoch: Callable[[int], None]) -> dict | None:
        """Restore the newest checkpoint of this experiment and return its loop state (epoch,
        step, epoch_step, history), or None. Inside an epoch, ``start_epoch`` (the method's
        epoch-start hook) runs before the checkpoint is restored over it."""
        if self.path is None:
            return None
        for candidate in checkpoint_files(self.path):
            try:
                meta = self.backend.peek(candidate)
            except CheckpointError as exc:  # a file cut short by a kill: skip to an older one
                if self.backend.is_main:
                    logger.warning(f"{self.desc}: skipping unreadable {candidate.name} ({exc})")
                continue
            if meta is None or meta.get("fingerprint") != self.fingerprint:
                if self.backend.is_main:
                    logger.warning(f"{self.desc}: {candidate.name} belongs to another experiment; "
                             "starting afresh (its checkpoints are replaced by the first save)")
                self.foreign = checkpoint_files(self.path)
                return None
            if meta.get("epoch_step", 0):
                start_epoch(int(meta["epoch"]))
            saved = self.backend.load(candidate, model, optimizer)
            sampler.load_state_dict(saved["sampler"])
            rngs = saved.get("rng") or []
            if len(rngs) == self.backend.world_size:  # same ranks: each continues its stream
                set_rng_state(rngs[self.backend.rank])
            self.last_good = candidate
            if self.backend.is_main:
                logger.info(f"{self.desc}: resuming from {candidate.name} (epoch "
                         f"{saved['epoch']}, step {saved['step']})")
            return {"epoch": saved["epoch"], "step": saved["step"],
                    "epoch_step": saved.get("epoch_step", 0), "history": saved["history"]}
        return None

    def target(self, step: int) -> Path:
        return self.path.parent / f"{self.path.stem}-{step:09d}.pt"

    def save(self, state, model, optimizer, sampler) -> None:
        """Write ``state``'s step (``state``: epoch, step, epoch_step, history) on every rank."""
        if self.path is None:
            return
        rngs = self.backend.all_gather_object(rng_state())
        target = self.target(state.step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.backend.save(target, {
                "sampler": sampler.state_dict(), "epoch": state.epoch, "step": state.step,
                "epoch_step": state.epoch_step, "history": state.history, "rng": rngs,
                "fingerprint": self.fingerprint, "world_size": self.backend.world_size},
                model, optimizer)
        except CheckpointWriteError as exc:  # the files of earlier saves are all still there
            raise CheckpointWriteError(
                f"{self.desc}: {exc} (step {state.step}); the newest complete checkpoint is "
                f"still {self.last_good or 'none (this was the first)'}: free space and run the "
                "same command again to resume from it") from None
        self.last_good = target
        if self.backend.is_main:
            for old in self.foreign + checkpoint_files(self.path)[self.keep:]:
                if old != target:
                    old.unlink(missing_ok=True)
            # temp files of saves killed half way (``atomic_path`` names them
            # ``.NAME-<step>.pt.*.partial``); this save has finished, so none is in flight
            for stale in self.path.parent.glob(f".{self.path.stem}-*.pt.*.partial"):
                stale.unlink(missing_ok=True)
        self.foreign = []
