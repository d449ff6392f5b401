"""Backends adapt the one training loop to an execution mode.

A backend knows the device, rank and world size and owns everything the loop must not branch on:
moving and wrapping the model (``setup``), mixed precision (``autocast``; fp16 loss scaling in
``backward``/``step``), gradient-accumulation micro-steps (``no_sync``), collectives the loop
needs (``barrier``, ``all_gather_object``, ``any_rank``), the fp32 weights monitors and exports
read (``fp32_weights``) and checkpoint files (``save``/``load``: read to CPU, then each piece of
state moved where it belongs, so RNG states stay the CPU byte tensors torch wants).
``LocalBackend`` is one process; ``DDPBackend`` (``engine/ddp.py``) and ``DeepSpeedBackend``
(``engine/deepspeed_backend.py``) override what differs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ltscale.core.errors import CheckpointError, RecipeError
from ltscale.engine.checkpoint import load_checkpoint, save_checkpoint

PRECISIONS = ("fp32", "bf16", "fp16")


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout: ``B×C×H×W`` as ``torch.channels_last``; multi-view
    ``B×V×C×H×W`` with channels innermost, so that each view ``x[:, v]`` has channels-last
    strides and ``x.flatten(0, 1)`` is a channels-last ``(B·V)×C×H×W`` batch without a copy.
    Other tensors are returned unchanged."""
    if not batch.is_floating_point():
        return batch
    if batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    if batch.dim() == 5:
        return batch.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return batch


def check_cuda() -> None:
    """Refuse ``device: cuda`` on a machine where torch sees no GPU, saying why."""
    if torch.cuda.is_available():
        return
    import os

    if torch.version.cuda is None:
        why = f"this torch ({torch.__version__}) is built without CUDA"
    elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        why = f"no GPU is visible (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
    else:
        why = "torch finds no GPU or driver on this machine"
    raise RecipeError(f"device: cuda, but {why}; set device=cpu, or device=auto to use a GPU "
                      "only where there is one")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        check_cuda()
        return torch.device("cuda", local_rank)
    return torch.device(name)


class LocalBackend:
    """One process on one device."""

    name = "local"
    rank = 0
    local_rank = 0
    world_size = 1

    def __init__(self, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        self.device = resolve_device(device, self.local_rank)
        self.precision, self.channels_last, self.compile = precision, channels_last, compile
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- model --------------------------------------------------------------------------------
    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def setup(self, model: nn.Module, optimizer, *, batch_size: int | None = None,
              accumulate: int = 1):
        """The model on the device (wrapped as the mode needs) and the optimizer to step.
        ``batch_size`` (per rank, per micro-batch) and ``accumulate`` are for backends that
        must know them up front (DeepSpeed's config)."""
        model = self._prepare(model)
        if self.compile:
            model.forward = torch.compile(model.forward)
        return model, optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move (and wrap) a model that has no optimizer (evaluation)."""
        return self._prepare(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    # --- one optimisation step ----------------------------------------------------------------
    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def clear_grads(self, optimizer, model: nn.Module | None = None) -> None:
        """Drop the previous step's gradients; the loop calls it after a step's first forward,
        just before its first backward (as ``zero_grad`` then ``backward`` in a hand-written
        loop). Freeing them there, rather than right after the update, lets backward's new
        gradients take the freed blocks: freed before the forward, the forward's activations
        take them and backward allocates fresh memory, 9 % more CPU per step for SimSiam on a
        CPU (`ltscale bench step`)."""
        optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, model: nn.Module | None = None) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer, model: nn.Module | None = None) -> None:
        self.scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
        self.scaler.update()

    def no_sync(self, model: nn.Module):
        """Context for micro-batches whose gradients are only accumulated."""
        return contextlib.nullcontext()

    def to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            return channels_last(batch) if self.channels_last else batch
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        return batch

    # --- collectives the loop uses ------------------------------------------------------------
    def barrier(self) -> None:
        pass

    def all_gather_object(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj):
        return obj

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank must call this)."""
        return bool(flag)

    # --- the weights monitors and exports read ------------------------------------------------
    @contextlib.contextmanager
    def fp32_weights(self, model: nn.Module, restore: bool = True):
        """The bare module with its fp32 (master) weights in place, for kNN monitors and encoder
        export; every rank must enter it (a sharded backend gathers). Here the module's weights
        are the master weights already (autocast computes in low precision, stores fp32);
        DeepSpeed swaps its fp32 master copies in (and back unless ``restore`` is false, for a
        model whose training is over)."""
        yield self.unwrap(model)

    def finish(self, model: nn.Module) -> nn.Module:
        """After training: the bare module, holding its fp32 master weights for good (export,
        evaluation, the next stage). Every rank must call this."""
        with self.fp32_weights(model, restore=False) as module:
            return module

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (per epoch) on a CUDA device."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # --- state and checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save(self, path: Path, state: dict, model: nn.Module, optimizer) -> None:
        """Write ``state`` plus model and optimizer state atomically (rank 0 writes)."""
        if self.is_main:
            save_checkpoint(path, {**state, "model": self.unwrap(model).state_dict(),
                                   "optimizer": optimizer.state_dict(),
                                   "backend": self.state_dict()})
        self.barrier()

    def load(self, path: Path, model: nn.Module, optimizer) -> dict:
        """Restore model, optimizer and backend state from ``path``; returns the whole state."""
        # to CPU first: ``load_state_dict`` copies weights and optimizer state onto the model's
        # device, and the RNG states must stay CPU byte tensors
        saved = load_checkpoint(path, map_location="cpu")
        try:
            self.unwrap(model).load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            # torch's message lists every mismatched tensor: keep its start
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise CheckpointError(f"{path}: the checkpoint does not fit this model or optimizer "
                                  f"(saved by another architecture or settings: {first}); move "
                                  "it away or use another output directory") from None
        self.load_state_dict(saved.get("backend", {}))
        return saved

    def peek(self, path: Path) -> dict | None:
        """The checkpoint's metadata (fingerprint, epoch, step) without restoring, or None."""
        path = Path(path)
        return load_checkpoint(path) if path.exists() else None

    def close(self) -> None:
        pass
