"""Collectives for method code: the one place methods reach other ranks.

Methods and losses never import ``torch.distributed``; they call these helpers, which are
identities in a single process (or before a process group exists), so the same method code runs
on one CPU and on many GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank its slice of the summed gradient."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks in rank order; gradients flow back
    to each rank's own part (e.g. SimCLR's negatives from all ranks)."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks in rank order, without gradient (e.g. MoCo's queue keys)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor; gradient-free)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place (differentiable uses: see ``gather_with_grad``)."""
    if is_distributed():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def shuffle_batch(x: torch.Tensor, generator: torch.Generator | None = None):
    """MoCo's shuffled BN across ranks: gather the global batch, permute it with a permutation
    every rank agrees on (drawn on rank 0, broadcast), give each rank its slice; returns
    (this rank's shuffled slice, the index to undo it with ``unshuffle_batch``)."""
    if not is_distributed():
        perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
        return x[perm], torch.argsort(perm)
    full = gather(x)
    perm = torch.randperm(full.shape[0], generator=generator, device="cpu").to(x.device)
    dist.broadcast(perm, src=0)
    n = x.shape[0]
    r = dist.get_rank()
    return full[perm[r * n:(r + 1) * n]], torch.argsort(perm)


@torch.no_grad()
def unshuffle_batch(x: torch.Tensor, undo: torch.Tensor) -> torch.Tensor:
    """The inverse of ``shuffle_batch`` for this rank's rows."""
    if not is_distributed():
        return x[undo]
    full = gather(x)
    n = x.shape[0]
    r = dist.get_rank()
    return full[undo[r * n:(r + 1) * n]]


# --- control-plane collectives for backends ---------------------------------------------------
def control_group(dist_backend: str):
    """The process group for small control flags (stop requests): a gloo group beside an NCCL
    one, so that agreeing on a flag is a CPU all-reduce that never waits for the GPU's queue;
    the default group (None) when that is gloo already. Every rank must call this."""
    return dist.new_group(backend="gloo") if dist_backend == "nccl" else None


def any_true(flag: bool, group=None) -> bool:
    """Whether ``flag`` is true on any rank of ``group`` (a 4-byte all-reduce)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())
