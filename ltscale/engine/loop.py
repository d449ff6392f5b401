"""The one training loop every method (SSL or supervised) and every backend runs through.

Per optimizer step: ``accumulate`` micro-batches (forward under the backend's autocast, backward
with its loss scaling, gradient sync only on the last), then the step, the method's
``after_step`` hook (EMA targets, queues) and the sampler's position. A loss that is not finite
stops the run at once, naming the step and the last good checkpoint.

``fit`` sets up, resumes and runs the epochs; ``_Run.step`` is one optimizer step and
``_Run.end_epoch`` an epoch's record and checkpoint; ``CheckpointManager``
(``engine/checkpoint.py``) resumes, saves and keeps the files.

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
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ltscale.core.errors import DataError
from ltscale.core.progress import bar as progress_bar
from ltscale.data.loading.base import EpochStats, report_skipped
from ltscale.engine import preempt
from ltscale.engine.checkpoint import CheckpointManager
from ltscale.engine.optim import lr_factor, momentum_offset, set_lr, set_momentum

logger = logging.getLogger(__name__)


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


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux



def _stop_requested(backend, step: int, every: int) -> bool:
    """Whether to stop before step ``step`` + 1: this process's flag alone, or — with several
    ranks, every ``every`` steps — whether any rank was asked to (a signal may reach one rank
    only, and all must stop at the same step)."""
    if backend.world_size == 1:
        return preempt.requested()
    if step % max(1, every):
        return False
    return backend.any_rank(preempt.requested())


def _preempted(ckpt, state, model, optimizer, sampler, cfg, backend):
    """Save this step's checkpoint on every rank (unless it was just written) and stop."""
    if ckpt.path is not None and (ckpt.last_good is None or
                                  ckpt.last_good != ckpt.target(state.step)):
        ckpt.save(state, model, optimizer, sampler)
    where = ckpt.last_good or "no checkpoint (none configured)"
    message = (f"{cfg.desc}: stopped on request at epoch {state.epoch + 1}, step {state.step}; "
               f"saved {where}")
    if backend.is_main:
        logger.info(message)
    raise preempt.Preempted(message, ckpt.last_good)


@dataclass
class _EpochMeter:
    """What one epoch's record is computed from."""
    t0: float = field(default_factory=time.perf_counter)
    sums: dict = field(default_factory=dict)
    seen: int = 0
    steps: int = 0
    wait: float = 0.0


class _Run:
    """One ``fit`` call's fixed parts: the wrapped model, its optimizer and sampler, the schedule,
    the checkpoints; ``step`` takes one optimizer step, ``end_epoch`` closes an epoch."""

    def __init__(self, model, optimizer, sampler, loader, cfg: LoopConfig, backend, tracker,
                 ckpt: CheckpointManager, *, steps_per_epoch: int):
        self.model, self.optimizer, self.sampler, self.loader = model, optimizer, sampler, loader
        self.cfg, self.backend, self.tracker, self.ckpt = cfg, backend, tracker, ckpt
        self.inner = backend.unwrap(model)
        self.micro = max(1, cfg.accumulate)
        self.steps_per_epoch = steps_per_epoch
        self.total = cfg.epochs * steps_per_epoch
        # onecycle peaks at the fractional step warm-up − 1, as torch's OneCycleLR does
        self.warmup = cfg.warmup_epochs * steps_per_epoch if cfg.schedule == "onecycle" \
            else int(cfg.warmup_epochs * steps_per_epoch)

    def _micro_batch(self, batches, state: LoopState, epoch: int, m: int,
                     meter: _EpochMeter) -> dict:
        """Forward and backward of micro-batch ``m``; its outputs as plain numbers (the step's
        tensors and the batch are not kept alive into the next forward)."""
        backend, cfg = self.backend, self.cfg
        t_wait = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            raise DataError(f"{cfg.desc}: the loader ended after {state.epoch_step} of "
                            f"{self.steps_per_epoch} steps in epoch {epoch + 1}") from None
        meter.wait += time.perf_counter() - t_wait
        batch = backend.to_device(batch)
        sync = (backend.no_sync(self.model) if m < self.micro - 1
                else contextlib.nullcontext())
        with sync:
            with backend.autocast():
                out = self.model(batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()):
                where = self.ckpt.last_good or "none written yet"
                raise FloatingPointError(
                    f"{cfg.desc}: loss is {float(loss.detach())} at epoch {epoch + 1}, "
                    f"step {state.step + 1}; stopped without taking the step. Last good "
                    f"checkpoint: {where}. Lower the learning rate or use bf16/fp32 "
                    "precision instead of fp16.")
            if m == 0:
                backend.clear_grads(self.optimizer, self.model)
            backend.backward(loss / self.micro, self.model)
        meter.seen += len(batch[1])
        return {k: float(v.detach()) for k, v in out.items()}

    def step(self, batches, state: LoopState, epoch: int, meter: _EpochMeter, bar) -> None:
        """One optimizer step: ``accumulate`` micro-batches, the update, the method's
        ``after_step`` hook, the sampler's position, logging, a mid-epoch checkpoint when due."""
        cfg = self.cfg
        if preempt.watching() and _stop_requested(self.backend, state.step,
                                                  cfg.stop_check_every):
            _preempted(self.ckpt, state, self.model, self.optimizer, self.sampler, cfg,
                       self.backend)
        lr = set_lr(self.optimizer, lr_factor(state.step, self.total, self.warmup, cfg.schedule))
        if cfg.schedule == "onecycle":
            set_momentum(self.optimizer,
                         momentum_offset(state.step, self.total, self.warmup, cfg.schedule))
        outs = [self._micro_batch(batches, state, epoch, m, meter) for m in range(self.micro)]
        self.backend.step(self.optimizer, self.model)
        hook = getattr(self.inner, "after_step", None)
        if hook is not None:
            hook(state.step, self.total)
        self.sampler.advance(self.micro)
        state.step += 1
        state.epoch_step += 1
        meter.steps += 1
        for out in outs:
            for k, v in out.items():
                meter.sums[k] = meter.sums.get(k, 0.0) + v / self.micro
        if state.step % cfg.log_every == 0 and self.backend.is_main:
            self.tracker.log_metrics({f"train/{k}": v for k, v in outs[-1].items()}
                                     | {"train/lr": lr}, step=state.step)
        bar.set_postfix(loss=f"{outs[-1]['loss']:.4f}")
        bar.update()
        if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
                and state.epoch_step < self.steps_per_epoch):
            self.ckpt.save(state, self.model, self.optimizer, self.sampler)

    def end_epoch(self, state: LoopState, epoch: int, meter: _EpochMeter,
                  on_epoch_end: Callable[[int], dict] | None) -> None:
        """The epoch's record (means of the step outputs, throughput, data wait, peak memory,
        every rank's skipped samples, the monitors'), then the epoch-end checkpoint."""
        backend, cfg = self.backend, self.cfg
        seconds = time.perf_counter() - meter.t0
        n = max(1, meter.steps)
        record = {f"epoch/{k}": v / n for k, v in meter.sums.items()}
        record |= {"epoch/images": float(meter.seen * backend.world_size),
                   "epoch/steps": float(meter.steps),
                   "epoch/images_per_s": meter.seen * backend.world_size / seconds,
                   "epoch/seconds": seconds, "epoch/data_wait_fraction": meter.wait / seconds,
                   "epoch/peak_memory_mb": _peak_memory_mb(backend.device)}
        stats = getattr(self.loader, "stats", None)
        if stats is not None:
            # every rank skips its own samples: count and name them all. (The loop stops reading
            # after its last step, so a loader never reaches its own end-of-epoch report here.)
            skipped = [s for part in backend.all_gather_object(list(stats.skipped)) for s in part]
            record["data/skipped"] = float(len(skipped))
            if skipped and backend.is_main:
                report_skipped(EpochStats(skipped=skipped),
                               f"{cfg.desc} epoch {epoch + 1}")
        if on_epoch_end is not None:
            record |= on_epoch_end(epoch)
        state.epoch, state.epoch_step = epoch + 1, 0
        state.history.append({"epoch": state.epoch, **record})
        if backend.is_main:
            self.tracker.log_metrics(record, step=state.step)
        self.sampler.set_epoch(state.epoch)
        self.ckpt.save(state, self.model, self.optimizer, self.sampler)


def fit(method: torch.nn.Module, loader, sampler, optimizer, cfg: LoopConfig, backend, tracker,
        checkpoint: Path | None = None, on_epoch_end: Callable[[int], dict] | None = None,
        fingerprint: str = "") -> LoopState:
    """Train ``method`` for ``cfg.epochs``; resume from the newest checkpoint of the same
    experiment (same ``fingerprint``: data, method and optimisation settings).

    After each epoch: ``on_epoch_end(epoch)`` may add monitor metrics (e.g. kNN accuracy), then a
    checkpoint is written.
    """
    micro = max(1, cfg.accumulate)
    model, optimizer = backend.setup(method, optimizer, batch_size=sampler.batch_size,
                                     accumulate=micro)
    epoch_hook = getattr(backend.unwrap(model), "set_epoch", None)

    def start_epoch(epoch: int) -> None:
        if epoch_hook is not None:  # e.g. re-pruning, re-clustering, deferred re-weighting
            epoch_hook(epoch, cfg.epochs)

    ckpt = CheckpointManager(checkpoint, backend, fingerprint, keep=cfg.keep, desc=cfg.desc)
    resumed = ckpt.resume(model, optimizer, sampler, start_epoch)
    state = LoopState(**resumed) if resumed else LoopState()
    steps_per_epoch = sampler.batches_per_epoch() // micro
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.desc}: {sampler.n} samples make no full step of {micro} × "
                        f"{sampler.batch_size} per rank; lower the batch size or accumulation")
    run = _Run(model, optimizer, sampler, loader, cfg, backend, tracker, ckpt,
               steps_per_epoch=steps_per_epoch)
    model.train()
    with preempt.loop_running():
        for epoch in range(state.epoch, cfg.epochs):
            if state.epoch_step == 0:  # a fresh epoch (inside one, resume ran the hook)
                sampler.set_epoch(epoch)
                start_epoch(epoch)
            backend.reset_peak_memory()
            meter = _EpochMeter()
            bar = progress_bar(total=steps_per_epoch, initial=state.epoch_step,
                               desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}",
                               enabled=cfg.progress and backend.is_main, unit="step")
            batches = iter(loader)
            while state.epoch_step < steps_per_epoch:
                run.step(batches, state, epoch, meter, bar)
            bar.close()
            del batches  # the loader's workers move on to the next epoch
            run.end_epoch(state, epoch, meter, on_epoch_end)
    return state
