"""Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``: one process per
device, launched by torchrun or SLURM (see ``ltscale/launch``).

Each rank reads its share of every global batch (``EpochSampler`` with this backend's rank and
world size), computes the loss on it, and DDP averages the gradients over ranks during
``backward``, so a step at world size ``W`` with ``B`` samples per rank equals a one-process step
on the ``W·B`` samples of the global batch (up to the summation order of the all-reduce).

**Why methods stay consistent without talking to each other.** A method's ``after_step`` hook
(EMA target networks, queues, centers) and its buffers are updated by every rank independently.
They stay identical on all ranks as long as

* every rank starts from the same state — DDP broadcasts rank 0's parameters and buffers when it
  wraps the model, and the checkpoint every rank loads is the same file;
* every rank applies the same update — the parameters are identical after each step (averaged
  gradients, same optimizer, same lr schedule, same loss-scaler decision because an overflow in
  the averaged gradient is seen by every rank), and a hook computes from parameters, the step
  number, or values gathered with ``ltscale.engine.dist`` (e.g. MoCo enqueues ``dist.gather``-ed
  keys, never only its own);
* a hook draws no random numbers of its own, or draws them from a generator seeded the same on
  every rank.

Methods and losses never import ``torch.distributed``; only ``engine/`` and ``launch/`` do.

**Batch norm.** Without ``sync_bn`` each rank normalises with its own per-rank batch statistics
and ``broadcast_buffers`` (default on) copies rank 0's running statistics (and any other buffer) to
every rank before each forward. With ``sync_bn`` the statistics are those of the global batch,
buffers then agree by construction and are not re-broadcast. On CUDA ``nn.SyncBatchNorm`` is used;
torch's refuses CPU modules, so on CPU (gloo) ``CpuSyncBatchNorm`` reduces the per-channel sums
with a differentiable all-reduce instead.

**Failure is bounded.** Every collective has a timeout (``timeout_s``): a rank waiting on a peer
that died raises instead of hanging. Under torchrun the elastic agent also terminates the other
workers as soon as one exits non-zero, so the job ends non-zero within seconds
(``tests/unit/engine/test_ddp.py`` checks both ranks are gone well inside a minute).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import weakref
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ltscale.core.dist_env import DistEnv
from ltscale.engine.backend import LocalBackend
from ltscale.engine.dist import any_true, control_group

DIST_BACKENDS = ("auto", "gloo", "nccl")
_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch, for CPU tensors (gloo):
    per-channel sums, sums of squares and counts are all-reduced (differentiably), so every rank
    normalises alike and updates identical running statistics. Evaluation, and training without a
    process group, is plain batch norm. (DDP refuses ``nn.SyncBatchNorm`` on CPU modules, and
    torch's kernel takes only GPU tensors, hence this class.)"""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_tensor([xf.numel() / c])])
        total = _AllReduceSum.apply(local, dist.group.WORLD)
        count = total[-1].detach()
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0.0)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (self.momentum if self.momentum is not None
                     else 1.0 / float(self.num_batches_tracked))
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1.0, 1.0)),
                                                  alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, cpu: bool) -> nn.Module:
    """Every ``BatchNorm{1,2,3}d`` of ``model`` synchronised over the process group: as
    ``nn.SyncBatchNorm`` on GPUs, as ``CpuSyncBatchNorm`` on CPU (the same module objects,
    re-classed). Parameters, buffers and state-dict keys are unchanged, so the optimizer keeps
    its parameters and checkpoints load into the unconverted network."""
    if not cpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            m.__class__ = CpuSyncBatchNorm
    return model


def replicated_buffer_names(model: nn.Module) -> list[str]:
    """Qualified names of the buffers that modules list in ``replicated_buffers``: state every
    rank updates identically from gathered data (MoCo's queue, SBCL's feature bank), which DDP
    therefore need not broadcast from rank 0 at every forward (for SBCL's bank at ImageNet-LT
    size that copy would be ~60 MB per step)."""
    names = []
    for prefix, module in model.named_modules():
        for name in getattr(module, "replicated_buffers", ()):
            if name not in dict(module.named_buffers(recurse=False)):
                raise AttributeError(f"{type(module).__name__}.replicated_buffers names {name!r}, "
                                     "which is not one of its buffers")
            names.append(f"{prefix}.{name}" if prefix else name)
    return names


class DDPBackend(LocalBackend):
    """One process per device in a ``torch.distributed`` process group (see module docstring).

    ``dist_backend``: ``auto`` is nccl on CUDA, gloo on CPU. ``broadcast_buffers``: ``None`` →
    ``not sync_bn``. ``env``: where this process sits (default: ``DistEnv.from_env()``). An
    existing default process group is reused (and then not destroyed by ``close``).
    """

    name = "ddp"

    def __init__(self, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False, *,
                 dist_backend: str = "auto", sync_bn: bool = False, timeout_s: float = 600,
                 broadcast_buffers: bool | None = None, env: DistEnv | None = None):
        if dist_backend not in DIST_BACKENDS:
            raise ValueError(f"unknown dist_backend {dist_backend!r}; choose one of "
                             f"{DIST_BACKENDS}")
        env = env if env is not None else DistEnv.from_env()
        self.env = env
        self.rank, self.local_rank, self.world_size = env.rank, env.local_rank, env.world_size
        super().__init__(device, precision, channels_last, compile)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if dist_backend == "auto":
            dist_backend = "nccl" if self.device.type == "cuda" else "gloo"
        if dist_backend == "nccl" and self.device.type != "cuda":
            raise ValueError("dist_backend nccl needs CUDA devices; use gloo on CPU")
        self.dist_backend, self.sync_bn, self.timeout_s = dist_backend, sync_bn, timeout_s
        self.broadcast_buffers = (not sync_bn) if broadcast_buffers is None else broadcast_buffers
        self._owns_group = False
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
                raise RuntimeError(f"a process group exists as rank {dist.get_rank()} of "
                                   f"{dist.get_world_size()}, but the environment says rank "
                                   f"{self.rank} of {self.world_size}")
        else:
            env.export()
            dist.init_process_group(dist_backend, init_method="env://", rank=self.rank,
                                    world_size=self.world_size,
                                    timeout=timedelta(seconds=timeout_s))
            self._owns_group = True
            ref = weakref.ref(self)
            atexit.register(lambda: ref() is not None and ref().close())
        self._control = control_group(dist_backend)

    # --- model --------------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer, *, batch_size: int | None = None,
              accumulate: int = 1):
        if self.sync_bn:
            model = convert_sync_batchnorm(model, cpu=self.device.type == "cpu")
        model = self._prepare(model)
        if self.compile:
            model.forward = torch.compile(model.forward)
        # rank 0's parameters and buffers are copied to every rank when wrapping; the per-forward
        # buffer copy is called forward_sync_buffers in newer torch (broadcast_buffers before)
        buffers = ({"forward_sync_buffers": self.broadcast_buffers} if _HAS_FORWARD_SYNC
                   else {"broadcast_buffers": self.broadcast_buffers})
        ignored = replicated_buffer_names(model)
        if ignored:  # kept equal by the method itself: no copy of rank 0's at every forward
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        ddp = DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False, **buffers)
        return ddp, optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model: nn.Module):
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    # --- collectives --------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.dist_backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        return any_true(flag, self._control)

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
