"""The one training loop every method (SSL or supervised) and every backend runs through.

Per optimizer step: ``accumulate`` micro-batches (forward under the backend's autocast, backward
with its loss scaling, gradient sync only on the last), then the step, the method's
``after_step`` hook (EMA targets, queues) and the sampler's position. A loss that is not finite
stops the run at once, naming the step and the last good checkpoint.

Checkpoints (``checkpoint`` = ``DIR/NAME.pt`` → files ``DIR/NAME-<step>.pt``) hold the model,
optimizer, backend (loss scaler) and sampler state, the loop state and every rank's RNG states;
they are written atomically at each epoch end and every ``checkpoint_every`` steps, the newest
``keep`` are kept (temp files of a save killed half way never carry a checkpoint's name, so they
are never resumed from, and the next save removes them), and a run resumes from the newest
complete one that belongs to the same experiment (``fingerprint``) — mid-epoch included: the
sampler then yields exactly the batches that remain.

The method's epoch-start hook (``set_epoch``: SDCLR's pruning masks, SBCL's clustering, DRW's
switch) runs once per epoch, when the epoch starts. One rule makes it idempotent on resume:
resuming *inside* an epoch runs the hook first and then restores the checkpoint over it, so
whatever the hook stored in the model comes from the checkpoint (not from a second run of the
hook on the resumed weights), and whatever it derives from the epoch number alone is set again.

A stop request (``preempt.watch``: the scheduler's warning signal) is honoured at a step
boundary: that step's checkpoint is written on every rank, then ``Preempted`` is raised. One
process checks its flag before every step; several ranks agree on it (a signal may reach one
rank only) with a 4-byte all-reduce every ``stop_check_every`` steps, on a CPU group.
"""

from __future__ import annotations

import contextlib
import random
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ltscale.data.loading import EpochStats, report_skipped
from ltscale.engine import preempt
from ltscale.engine.optim import lr_factor, set_lr
from ltscale.errors import CheckpointError, DataError
from ltscale.progress import bar as progress_bar


@dataclass
class LoopConfig:
    epochs: int
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    max_steps_per_epoch: int | None = None
    accumulate: int = 1           # micro-batches per optimizer step
    checkpoint_every: int = 0     # optimizer steps between mid-epoch checkpoints; 0: epoch ends
    keep: int = 2                 # checkpoints kept
    log_every: int = 10
    stop_check_every: int = 10    # steps between the ranks' agreement on a stop request
    progress: bool = True
    desc: str = "train"


@dataclass
class LoopState:
    epoch: int = 0            # epochs completed
    step: int = 0             # optimizer steps completed
    epoch_step: int = 0       # optimizer steps completed in the current epoch
    history: list[dict] = field(default_factory=list)


# --- checkpoint files ---------------------------------------------------------------------------
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


def _rng_state() -> dict:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())  # CPU byte tensors, wherever the file was mapped
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class _Checkpoints:
    def __init__(self, path: Path | None, cfg: LoopConfig, backend, fingerprint: str, log):
        self.path, self.cfg, self.backend, self.fingerprint, self.log = path, cfg, backend, \
            fingerprint, log
        self.last_good: Path | None = None
        self.foreign: list[Path] = []  # another experiment's checkpoints, removed at first save

    def resume(self, model, optimizer, sampler,
               start_epoch: Callable[[int], None]) -> LoopState | None:
        """Restore the newest checkpoint of this experiment. Inside an epoch, ``start_epoch``
        (the method's epoch-start hook) runs before the checkpoint is restored over it."""
        if self.path is None:
            return None
        for candidate in checkpoint_files(self.path):
            try:
                meta = self.backend.peek(candidate)
            except CheckpointError as exc:  # a file cut short by a kill: skip to an older one
                if self.backend.is_main:
                    self.log(f"{self.cfg.desc}: skipping unreadable {candidate.name} ({exc})")
                continue
            if meta is None or meta.get("fingerprint") != self.fingerprint:
                if self.backend.is_main:
                    self.log(f"{self.cfg.desc}: {candidate.name} belongs to another experiment; "
                             "starting afresh (its checkpoints are replaced by the first save)")
                self.foreign = checkpoint_files(self.path)
                return None
            if meta.get("epoch_step", 0):
                start_epoch(int(meta["epoch"]))
            saved = self.backend.load(candidate, model, optimizer)
            sampler.load_state_dict(saved["sampler"])
            rngs = saved.get("rng") or []
            if len(rngs) == self.backend.world_size:  # same ranks: each continues its stream
                _set_rng_state(rngs[self.backend.rank])
            self.last_good = candidate
            state = LoopState(saved["epoch"], saved["step"], saved.get("epoch_step", 0),
                              saved["history"])
            if self.backend.is_main:
                self.log(f"{self.cfg.desc}: resuming from {candidate.name} (epoch "
                         f"{state.epoch}, step {state.step})")
            return state
        return None

    def target(self, step: int) -> Path:
        return self.path.parent / f"{self.path.stem}-{step:09d}.pt"

    def save(self, state: LoopState, model, optimizer, sampler) -> None:
        if self.path is None:
            return
        rngs = self.backend.all_gather_object(_rng_state())
        target = self.target(state.step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.backend.save(target, {
            "sampler": sampler.state_dict(), "epoch": state.epoch, "step": state.step,
            "epoch_step": state.epoch_step, "history": state.history, "rng": rngs,
            "fingerprint": self.fingerprint, "world_size": self.backend.world_size},
            model, optimizer)
        self.last_good = target
        if self.backend.is_main:
            for old in self.foreign + checkpoint_files(self.path)[self.cfg.keep:]:
                if old != target:
                    old.unlink(missing_ok=True)
            # temp files of saves killed half way (``atomic_path`` names them
            # ``.NAME-<step>.pt.*.partial``); this save has finished, so none is in flight
            for stale in self.path.parent.glob(f".{self.path.stem}-*.pt.*.partial"):
                stale.unlink(missing_ok=True)
        self.foreign = []


def _stop_requested(backend, step: int, every: int) -> bool:
    """Whether to stop before step ``step`` + 1: this process's flag alone, or — with several
    ranks, every ``every`` steps — whether any rank was asked to (a signal may reach one rank
    only, and all must stop at the same step)."""
    if backend.world_size == 1:
        return preempt.requested()
    if step % max(1, every):
        return False
    return backend.any_rank(preempt.requested())


def _preempted(ckpt, state, model, optimizer, sampler, cfg, backend, log):
    """Save this step's checkpoint on every rank (unless it was just written) and stop."""
    if ckpt.path is not None and (ckpt.last_good is None or
                                  ckpt.last_good != ckpt.target(state.step)):
        ckpt.save(state, model, optimizer, sampler)
    where = ckpt.last_good or "no checkpoint (none configured)"
    message = (f"{cfg.desc}: stopped on request at epoch {state.epoch + 1}, step {state.step}; "
               f"saved {where}")
    if backend.is_main:
        log(message)
    raise preempt.Preempted(message, ckpt.last_good)


def fit(method: torch.nn.Module, loader, sampler, optimizer, cfg: LoopConfig, backend, tracker,
        checkpoint: Path | None = None, on_epoch_end: Callable[[int], dict] | None = None,
        fingerprint: str = "", log=print) -> LoopState:
    """Train ``method`` for ``cfg.epochs``; resume from the newest checkpoint of the same
    experiment (same ``fingerprint``: data, method and optimisation settings).

    After each epoch: ``on_epoch_end(epoch)`` may add monitor metrics (e.g. kNN accuracy), then a
    checkpoint is written.
    """
    micro = max(1, cfg.accumulate)
    model, optimizer = backend.setup(method, optimizer, batch_size=sampler.batch_size,
                                     accumulate=micro)
    inner = backend.unwrap(model)
    epoch_hook = getattr(inner, "set_epoch", None)

    def start_epoch(epoch: int) -> None:
        if epoch_hook is not None:  # e.g. re-pruning, re-clustering, deferred re-weighting
            epoch_hook(epoch, cfg.epochs)

    ckpt = _Checkpoints(Path(checkpoint) if checkpoint is not None else None, cfg, backend,
                        fingerprint, log)
    state = ckpt.resume(model, optimizer, sampler, start_epoch) or LoopState()
    steps_per_epoch = sampler.batches_per_epoch() // micro
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.desc}: {sampler.n} samples make no full step of {micro} × "
                        f"{sampler.batch_size} per rank; lower the batch size or accumulation")
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    model.train()
    with preempt.loop_running():
        for epoch in range(state.epoch, cfg.epochs):
            if state.epoch_step == 0:  # a fresh epoch (inside one, resume ran the hook)
                sampler.set_epoch(epoch)
                start_epoch(epoch)
            backend.reset_peak_memory()
            sums: dict[str, float] = {}
            seen, steps, wait, t0 = 0, 0, 0.0, time.perf_counter()
            bar = progress_bar(total=steps_per_epoch, initial=state.epoch_step,
                               desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}",
                               enabled=cfg.progress and backend.is_main, unit="step")
            batches = iter(loader)
            while state.epoch_step < steps_per_epoch:
                if preempt.watching() and _stop_requested(backend, state.step,
                                                          cfg.stop_check_every):
                    _preempted(ckpt, state, model, optimizer, sampler, cfg, backend, log)
                lr = set_lr(optimizer, lr_factor(state.step, total, warmup, cfg.schedule))
                outs = []
                for m in range(micro):
                    t_wait = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        raise DataError(f"{cfg.desc}: the loader ended after {state.epoch_step} of "
                                        f"{steps_per_epoch} steps in epoch {epoch + 1}") from None
                    wait += time.perf_counter() - t_wait
                    batch = backend.to_device(batch)
                    sync = backend.no_sync(model) if m < micro - 1 else contextlib.nullcontext()
                    with sync:
                        with backend.autocast():
                            out = model(batch)
                        loss = out["loss"]
                        if not torch.isfinite(loss.detach()):
                            where = ckpt.last_good or "none written yet"
                            raise FloatingPointError(
                                f"{cfg.desc}: loss is {float(loss.detach())} at epoch {epoch + 1}, "
                                f"step {state.step + 1}; stopped without taking the step. Last good "
                                f"checkpoint: {where}. Lower the learning rate or use bf16/fp32 "
                                "precision instead of fp16.")
                        backend.backward(loss / micro, model)
                    # plain numbers from here on: the step's output tensors (and the batch) are not
                    # kept alive into the next forward
                    outs.append({k: float(v.detach()) for k, v in out.items()})
                    seen += len(batch[1])
                    del out, loss, batch
                backend.step(optimizer, model)
                hook = getattr(inner, "after_step", None)
                if hook is not None:
                    hook(state.step, total)
                sampler.advance(micro)
                state.step += 1
                state.epoch_step += 1
                steps += 1
                for out in outs:
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + v / micro
                if state.step % cfg.log_every == 0 and backend.is_main:
                    tracker.log_metrics({f"train/{k}": v for k, v in outs[-1].items()}
                                        | {"train/lr": lr}, step=state.step)
                bar.set_postfix(loss=f"{outs[-1]['loss']:.4f}")
                bar.update()
                if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
                        and state.epoch_step < steps_per_epoch):
                    ckpt.save(state, model, optimizer, sampler)
            bar.close()
            del batches  # the loader's workers move on to the next epoch
            seconds = time.perf_counter() - t0
            n = max(1, steps)
            record = {f"epoch/{k}": v / n for k, v in sums.items()}
            record |= {"epoch/images_per_s": seen * backend.world_size / seconds,
                       "epoch/seconds": seconds, "epoch/data_wait_fraction": wait / seconds,
                       "epoch/peak_memory_mb": _peak_memory_mb(backend.device)}
            stats = getattr(loader, "stats", None)
            if stats is not None:
                # every rank skips its own samples: count and name them all. (The loop stops reading
                # after its last step, so a loader never reaches its own end-of-epoch report here.)
                skipped = [s for part in backend.all_gather_object(list(stats.skipped)) for s in part]
                record["data/skipped"] = float(len(skipped))
                if skipped and backend.is_main:
                    report_skipped(EpochStats(skipped=skipped), log, f"{cfg.desc} epoch {epoch + 1}")
            if on_epoch_end is not None:
                record |= on_epoch_end(epoch)
            state.epoch, state.epoch_step = epoch + 1, 0
            state.history.append({"epoch": state.epoch, **record})
            if backend.is_main:
                tracker.log_metrics(record, step=state.step)
            sampler.set_epoch(state.epoch)
            ckpt.save(state, model, optimizer, sampler)
    return state
