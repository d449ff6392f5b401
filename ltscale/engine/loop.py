"""The one training loop every method (SSL or supervised) runs through."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from ltscale.progress import bar as progress_bar

from ltscale.engine.checkpoint import load_checkpoint, save_checkpoint
from ltscale.engine.optim import lr_factor, set_lr
from ltscale.errors import DataError


@dataclass
class LoopConfig:
    epochs: int
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    max_steps_per_epoch: int | None = None
    log_every: int = 10
    progress: bool = True
    desc: str = "train"


@dataclass
class LoopState:
    epoch: int = 0            # epochs completed
    step: int = 0             # optimizer steps completed
    history: list[dict] = field(default_factory=list)


def fit(method: torch.nn.Module, loader, sampler, optimizer, cfg: LoopConfig, backend, tracker,
        checkpoint: Path | None = None, on_epoch_end: Callable[[int], dict] | None = None,
        fingerprint: str = "", log=print) -> LoopState:
    """Train ``method`` for ``cfg.epochs``; resume from ``checkpoint`` if it exists and was
    written by the same experiment (same ``fingerprint``: data, method and optimisation settings).

    After each epoch: ``on_epoch_end(epoch)`` may add monitor metrics (e.g. kNN accuracy), then the
    checkpoint (model, optimizer, loop and sampler state) is written atomically.
    """
    state = LoopState()
    model = backend.wrap(method)
    if checkpoint is not None and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint)
        if saved.get("fingerprint") == fingerprint:
            backend.unwrap(model).load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            sampler.load_state_dict(saved["sampler"])
            state = LoopState(saved["epoch"], saved["step"], saved["history"])
            if backend.is_main:
                log(f"{cfg.desc}: resuming from {checkpoint} after epoch {state.epoch}")
        elif backend.is_main:
            log(f"{cfg.desc}: {checkpoint} belongs to another experiment; starting afresh "
                "(it is replaced at the end of the first epoch)")
    steps_per_epoch = sampler.batches_per_epoch()
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.desc}: {sampler.n} samples make no full batch of "
                         f"{sampler.batch_size} per rank; lower the batch size")
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    model.train()
    for epoch in range(state.epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        epoch_hook = getattr(backend.unwrap(model), "set_epoch", None)
        if epoch_hook is not None:  # e.g. deferred re-weighting in the loss
            epoch_hook(epoch, cfg.epochs)
        sums: dict[str, float] = {}
        seen, steps, t0 = 0, 0, time.perf_counter()
        bar = progress_bar(total=steps_per_epoch, desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}",
                           enabled=cfg.progress and backend.is_main, unit="step")
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            lr = set_lr(optimizer, lr_factor(state.step, total, warmup, cfg.schedule))
            batch = backend.to_device(batch)
            out = model(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{cfg.desc}: loss is {loss.item()} at epoch {epoch} "
                                         f"step {state.step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            backend.backward(loss)
            backend.step(optimizer)
            hook = getattr(backend.unwrap(model), "after_step", None)
            if hook is not None:
                hook(state.step, total)
            sampler.advance()
            state.step += 1
            steps += 1
            seen += len(batch[1])
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if state.step % cfg.log_every == 0 and backend.is_main:
                tracker.log_metrics({f"train/{k}": float(v.detach()) for k, v in out.items()}
                                    | {"train/lr": lr}, step=state.step)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        n = max(1, steps)
        record = {f"epoch/{k}": v / n for k, v in sums.items()}
        record |= {"epoch/images_per_s": seen * backend.world_size / seconds,
                   "epoch/seconds": seconds}
        stats = getattr(loader, "stats", None)
        if stats is not None:
            record["data/skipped"] = float(len(stats.skipped))
        if on_epoch_end is not None:
            record |= on_epoch_end(epoch)
        state.epoch = epoch + 1
        state.history.append({"epoch": state.epoch, **record})
        if backend.is_main:
            tracker.log_metrics(record, step=state.step)
        if checkpoint is not None and backend.is_main:
            sampler.set_epoch(state.epoch)
            save_checkpoint(checkpoint, {
                "model": backend.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(), "epoch": state.epoch, "step": state.step,
                "history": state.history, "fingerprint": fingerprint})
    return state
