"""DeepSpeed: ZeRO stages 0–2, bf16/fp16 and DeepSpeed's own checkpoints behind the backend API.

One process per device, started by ``torchrun`` (or ``deepspeed``) which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain single process also works. The DeepSpeed config
is generated from the constructor's arguments and the loop's batch size and accumulation when
``setup`` is called; ``config`` (a dict) is merged over it for anything else DeepSpeed offers.

How the loop's calls map onto the engine:

* ``backward(loss / accumulate)`` → ``engine.backward(loss, scale_wrt_gas=False)`` (the loop
  already divided by ``accumulate``; DeepSpeed must not divide again), followed by
  ``engine.step()`` for every micro-batch but the last — DeepSpeed counts micro-steps that way and
  only updates at the accumulation boundary.
* ``step`` → ``engine.step()`` at the boundary: reduction, fp16 loss-scale check (an overflowed
  step is skipped), clipping, the optimizer update and ``zero_grad``.
* ``no_sync`` is a null context: DeepSpeed itself reduces only at the boundary (stage 0/1) or
  reduce-scatters every micro-batch by design (stage 2).
* With bf16/fp16 DeepSpeed casts the module's parameters to that dtype (and keeps fp32 master
  copies of the optimised ones); floating-point inputs are cast to it by a forward pre-hook on
  the module. What a method declares ``keep_fp32`` (EMA targets, MoCo's queue, …) is restored
  to fp32 afterwards and norm statistics follow their weights (``engine/precision.py``), and
  ``autocast`` is torch's autocast in that dtype, so the fp32 parts and the low-precision
  parts meet in one forward.
* ``fp32_weights`` swaps the fp32 master weights (gathered from ZeRO's partitions) into the
  module for the kNN monitor and encoder export, which must not read the bf16 copies.
* ``setup`` returns ``engine.optimizer`` (the ZeRO/mixed-precision wrapper, or the client
  optimizer itself): its ``param_groups`` are the client optimizer's groups, so the loop's
  ``set_lr`` reaches the optimizer DeepSpeed steps.

Checkpoints. ``save(path)`` writes DeepSpeed's checkpoint (every rank its shards) into a hidden
temporary directory, renames it to ``NAME-<step>.ds`` beside ``path`` once every rank has finished,
and then writes ``path`` itself (``NAME-<step>.pt``) atomically: a small file holding the loop's
state and naming that directory. ``path`` is a file so the loop's retention (``unlink``) works;
a kill at any point leaves either the previous checkpoints only or a complete new one. Data
directories whose ``.pt`` file is gone (removed by retention) are deleted at the next save and at
``close``. ``peek`` reads the small file and checks the directory; ``load`` restores through
``engine.load_checkpoint`` and returns the client state DeepSpeed stored. Resuming a ZeRO-1/2
checkpoint expects the same number of ranks. DeepSpeed also drops its ``zero_to_fp32.py``
converter beside the checkpoints (it turns a ``NAME-<step>.ds`` directory into plain fp32 weights).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn

from ltscale.core.errors import CheckpointError, RecipeError
from ltscale.engine.backend import PRECISIONS, LocalBackend
from ltscale.engine.checkpoint import save_checkpoint
from ltscale.engine.deepspeed_checkpoint import (
    MODEL_STATES,
    checkpoint_name,
    data_dir,
    partial_dir,
    peek_checkpoint,
    prune_orphans,
)
from ltscale.engine.dist import any_true, control_group
from ltscale.engine.precision import apply_fp32_policy

ZERO_STAGES = (0, 1, 2)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cast_floats(obj, dtype: torch.dtype):
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


class DeepSpeedBackend(LocalBackend):
    """One process per device under DeepSpeed (ZeRO stage ``zero_stage``)."""

    name = "deepspeed"

    def __init__(self, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False, *, zero_stage: int = 2,
                 gradient_clipping: float = 0.0, dist_backend: str | None = None,
                 config: dict | None = None, initial_scale_power: int = 16,
                 timeout_s: float = 1800.0, quiet: bool = True, shm_comm: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        if zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {zero_stage!r}")
        if gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be >= 0, got {gradient_clipping}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {device!r}: DeepSpeed runs on 'auto', 'cpu' or 'cuda'")
        if device == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported
        try:
            import deepspeed
            from deepspeed.accelerator import get_accelerator
        except ImportError as exc:
            raise RecipeError(f"engine.backend=deepspeed needs DeepSpeed ({exc}): pip install "
                              "deepspeed, or `pip install -e '.[deepspeed]'`") from None
        self._ds = deepspeed
        if quiet:
            deepspeed.utils.logger.setLevel(logging.WARNING)
        acc = get_accelerator()
        kind = acc.device_name()
        if device != "auto" and kind != device:
            raise RuntimeError(f"device: {device} was requested but DeepSpeed's accelerator is "
                               f"{kind!r} (set DS_ACCELERATOR={device} before importing it)")
        if precision == "fp16" and not acc.is_fp16_supported():
            raise RuntimeError(f"precision fp16: DeepSpeed's {kind} accelerator does not support "
                               "fp16 on this machine; use bf16 or fp32")
        if precision == "bf16" and not acc.is_bf16_supported():
            raise RuntimeError(f"precision bf16: DeepSpeed's {kind} accelerator does not support "
                               "bf16 on this machine; use fp16 or fp32")

        if "RANK" not in os.environ:  # a plain single process: a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if kind == "cpu" and not shm_comm:
            # DeepSpeed's CPU comm backend JIT-compiles its shared-memory all-reduce op (g++,
            # minutes, cached per machine) at init; only tensor-parallel inference uses it, so
            # report it unavailable unless asked for (training collectives go through gloo)
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self._owns_group = not tdist.is_initialized()
        deepspeed.init_distributed(dist_backend=dist_backend or acc.communication_backend_name(),
                                   auto_mpi_discovery=False, verbose=not quiet,
                                   timeout=timedelta(seconds=timeout_s))
        self.rank = tdist.get_rank()
        self.world_size = tdist.get_world_size()
        self._control = control_group(tdist.get_backend())
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if kind != "cpu":
            acc.set_device(self.local_rank)
        self.device = torch.device(acc.device_name(self.local_rank) if kind != "cpu" else "cpu")
        self.precision, self.channels_last, self.compile = precision, channels_last, compile
        self.zero_stage, self.gradient_clipping = zero_stage, gradient_clipping
        self.extra_config = copy.deepcopy(config or {})
        self.initial_scale_power = initial_scale_power
        self.ds_config: dict | None = None
        self._engine = None
        self._saved_in: set[tuple[Path, str]] = set()

    # --- config ---------------------------------------------------------------------------------
    def make_config(self, batch_size: int, accumulate: int = 1) -> dict:
        """The DeepSpeed config for micro-batches of ``batch_size`` per rank and ``accumulate``
        micro-batches per optimizer step."""
        cfg: dict = {
            "train_micro_batch_size_per_gpu": int(batch_size),
            "gradient_accumulation_steps": int(accumulate),
            "zero_optimization": {"stage": self.zero_stage},
            # a client torch optimizer (SGD, LARS, ...) is fine for ZeRO 1/2: they only partition
            # its state; DeepSpeed merely warns for optimizers outside its tested list
            "zero_allow_untested_optimizer": True,
            # always explicit: DeepSpeed's own default (1.0 in 0.19) would clip silently
            "gradient_clipping": float(self.gradient_clipping),
            "steps_per_print": 2**31 - 1,  # the loop logs
            "wall_clock_breakdown": False,
        }
        if self.precision == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif self.precision == "fp16":
            cfg["fp16"] = {"enabled": True, "loss_scale": 0,  # 0: dynamic loss scaling
                           "initial_scale_power": self.initial_scale_power,
                           "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
        return _merge(cfg, self.extra_config)

    # --- model ----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer, *, batch_size: int | None = None,
              accumulate: int = 1):
        if batch_size is None:
            raise ValueError("the deepspeed backend needs the per-rank batch size up front")
        if optimizer is None:
            raise ValueError("the deepspeed backend needs the optimizer to wrap")
        self.ds_config = self.make_config(batch_size, max(1, accumulate))
        # weights stay in the default layout: ZeRO flattens them into one contiguous buffer (and
        # its broadcast refuses channels-last bf16 tensors); channels_last applies to the inputs
        # (``to_device``), which is what lets convolutions pick the channels-last kernels
        model = model.to(self.device)
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        engine, ds_optimizer, _, _ = self._ds.initialize(model=model, optimizer=optimizer,
                                                         config=self.ds_config)
        if self.precision != "fp32":
            dtype = self._low_dtype()
            apply_fp32_policy(engine.module, optimized)
            engine.module.register_forward_pre_hook(
                lambda _module, args, kwargs: (_cast_floats(args, dtype),
                                               _cast_floats(kwargs, dtype)), with_kwargs=True)
        if self.compile:
            engine.compile()
        groups = ds_optimizer.param_groups
        if len(groups) != len(optimizer.param_groups) or any(
                a is not b for a, b in zip(groups, optimizer.param_groups)):
            raise RuntimeError("DeepSpeed's optimizer does not share the client optimizer's "
                               "param_groups; learning-rate changes would not reach it")
        self._engine = engine
        return engine, ds_optimizer

    def _engine_of(self, model) -> "object":
        if isinstance(model, self._ds.DeepSpeedEngine):
            return model
        if self._engine is None:
            raise RuntimeError("deepspeed backend: call setup() before training")
        return self._engine

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, self._ds.DeepSpeedEngine) else model

    def _low_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float16

    @contextlib.contextmanager
    def fp32_weights(self, model: nn.Module, restore: bool = True):
        # (ZeRO-0 fp16 gives no per-parameter access to its master copies: there the fp16
        # weights are upcast)
        module = self.unwrap(model)
        if self.precision == "fp32":  # the module's parameters are the master weights
            yield module
            return
        from deepspeed.utils import safe_get_full_fp32_param

        swapped = []
        with torch.no_grad():
            for p in module.parameters():  # same order on every rank: the gathers pair up
                full = safe_get_full_fp32_param(p)  # None: not optimised (an fp32 EMA target)
                if full is None and p.dtype == torch.float32:
                    continue
                swapped.append((p, p.data))
                p.data = full.detach().to(p.device) if full is not None else p.data.float()
            for b in module.buffers():
                if b.is_floating_point() and b.dtype != torch.float32:
                    swapped.append((b, b.data))
                    b.data = b.data.float()
        try:
            yield module
        finally:
            if restore:
                for t, data in swapped:
                    t.data = data

    # --- one optimisation step ------------------------------------------------------------------
    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._low_dtype())

    def clear_grads(self, optimizer, model: nn.Module | None = None) -> None:
        pass  # DeepSpeed's engine.step() clears (its partitioned) gradients itself

    def backward(self, loss: torch.Tensor, model: nn.Module | None = None) -> None:
        engine = self._engine_of(model)
        engine.backward(loss, scale_wrt_gas=False)  # the loop already divided by accumulate
        if not engine.is_gradient_accumulation_boundary():
            engine.step()  # DeepSpeed's micro-step bookkeeping; no update off the boundary

    def step(self, optimizer, model: nn.Module | None = None) -> None:
        engine = self._engine_of(model)
        if not engine.is_gradient_accumulation_boundary():
            raise RuntimeError("deepspeed backend: step() called before the "
                               f"{engine.gradient_accumulation_steps()} micro-batches the config "
                               "accumulates")
        engine.step()

    def no_sync(self, model: nn.Module):
        return contextlib.nullcontext()

    # --- collectives ----------------------------------------------------------------------------
    def barrier(self) -> None:
        if tdist.is_initialized() and self.world_size > 1:
            self._ds.comm.barrier()

    def all_gather_object(self, obj) -> list:
        if not (tdist.is_initialized() and self.world_size > 1):
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not (tdist.is_initialized() and self.world_size > 1):
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        if not (tdist.is_initialized() and self.world_size > 1):
            return bool(flag)
        return any_true(flag, self._control)

    # --- state and checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}  # the fp16 loss scale lives in DeepSpeed's optimizer state

    def load_state_dict(self, state: dict) -> None:
        pass

    def save(self, path: Path, state: dict, model: nn.Module, optimizer) -> None:
        """DeepSpeed's checkpoint into ``NAME-<step>.ds``, then the small ``path`` file that makes
        it visible (every rank must call this)."""
        engine = self._engine_of(model)
        path = Path(path)
        final, tmp = data_dir(path), partial_dir(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            prune_orphans(path.parent, checkpoint_name(path))
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        engine.save_checkpoint(str(path.parent), tag=tmp.name, client_state=state,
                               save_latest=False)
        self.barrier()  # every rank's shards are on disk
        if self.is_main:
            if not (tmp / MODEL_STATES).is_file():
                raise CheckpointError(f"DeepSpeed wrote no {MODEL_STATES} into {tmp}")
            path.unlink(missing_ok=True)  # (re-saving a step) never point at a half-replaced dir
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            save_checkpoint(path, {**state, "deepspeed": {
                "dir": final.name, "zero_stage": self.zero_stage, "precision": self.precision,
                "world_size": self.world_size}})
            self._saved_in.add((path.parent, checkpoint_name(path)))
        self.barrier()

    def load(self, path: Path, model: nn.Module, optimizer) -> dict:
        engine = self._engine_of(model)
        path = Path(path)
        meta = peek_checkpoint(path)
        if meta is None:
            raise CheckpointError(f"checkpoint not found: {path}")
        info = meta["deepspeed"]
        if self.zero_stage > 0 and info.get("world_size") not in (None, self.world_size):
            raise CheckpointError(f"{path}: saved by {info['world_size']} ranks under ZeRO; this "
                                  f"run has {self.world_size}; resume with the same world size")
        loaded, client = engine.load_checkpoint(str(path.parent), tag=info["dir"])
        if loaded is None or client is None:
            raise CheckpointError(f"{path}: DeepSpeed could not load {info['dir']}")
        return client

    def peek(self, path: Path) -> dict | None:
        return peek_checkpoint(path)

    def close(self) -> None:
        if self.is_main:
            for parent, name in self._saved_in:
                prune_orphans(parent, name)
        self._engine = None
        if self._owns_group and tdist.is_initialized():
            self.barrier()
            tdist.destroy_process_group()
