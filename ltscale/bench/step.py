"""`ltscale bench step`: the engine's step time against a bare hand-written PyTorch loop.

Same method (SimSiam by default), backbone, optimizer and one fixed in-memory batch for both, so
the difference is what the engine adds per step (lr schedule, backend calls, hooks, sampler
bookkeeping, metric accumulation, progress bar). Alternating runs (A B, B A, …), median seconds
per step, as wall time and as process CPU time (``time.process_time``: the CPU seconds of every
thread of this process). On a shared machine the wall time also counts the time other processes
held the cores; the CPU time counts only the work this process did, so the engine's overhead
shows there even when the wall-time difference is buried in noise. With more than one intra-op
thread the CPU time also counts threads spinning at barriers while a sibling thread waits for a
core, which load from other processes inflates; ``threads=1`` (``--threads 1``) removes that.
"""

from __future__ import annotations

import statistics
import time

import torch

from ltscale.data.sampling import EpochSampler
from ltscale.engine.backend import LocalBackend
from ltscale.engine.loop import LoopConfig, fit
from ltscale.engine.optim import build_optimizer, lr_factor, set_lr
from ltscale.methods import create_method
from ltscale.models import create_backbone
from ltscale.track import NullTracker


class _Repeat:
    """A loader that yields the same batch ``n`` times per epoch."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch

    def __len__(self) -> int:
        return self.n


def _setup(method_name: str, backbone: str, batch: int, size: int, seed: int = 0):
    from ltscale.config.base import OptimCfg

    torch.manual_seed(seed)
    enc = create_backbone(backbone, in_chans=3, cifar_stem=True)
    method = create_method(method_name, enc, **({"proj_dim": 512, "pred_dim": 128}
                                               if method_name == "simsiam" else {}))
    groups = method.param_groups() if hasattr(method, "param_groups") else [
        {"params": list(method.parameters())}]
    opt = build_optimizer(groups, OptimCfg(), batch)
    g = torch.Generator().manual_seed(seed)
    data = (torch.randn(batch, method.views, 3, size, size, generator=g),
            torch.zeros(batch, dtype=torch.long), torch.arange(batch))
    return method, opt, data


def _engine(method_name, backbone, batch, size, steps) -> tuple[float, float]:
    method, opt, data = _setup(method_name, backbone, batch, size)
    sampler = EpochSampler(batch * steps, batch_size=batch)
    t, c = time.perf_counter(), time.process_time()
    fit(method, _Repeat(data, steps), sampler, opt, LoopConfig(epochs=1, warmup_epochs=0.1,
                                                                 progress=False, log_every=10),
        LocalBackend("cpu"), NullTracker())
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def _bare(method_name, backbone, batch, size, steps) -> tuple[float, float]:
    method, opt, data = _setup(method_name, backbone, batch, size)
    method.train()
    warmup = int(0.1 * steps)
    t, c = time.perf_counter(), time.process_time()
    for step in range(steps):
        set_lr(opt, lr_factor(step, steps, warmup, "cosine"))
        loss = method(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def bench_step(method: str = "simsiam", backbone: str = "cifar_resnet20", batch: int = 64,
               size: int = 32, steps: int = 30, repeats: int = 3,
               threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    _bare(method, backbone, batch, size, 3)  # warm-up (allocator, kernels)
    runs = {"bare": [], "engine": []}   # (wall s/step, CPU s/step) per run
    for r in range(repeats):  # A B, B A, A B …: no side always runs second
        order = ("bare", "engine") if r % 2 == 0 else ("engine", "bare")
        for side in order:
            fn = _bare if side == "bare" else _engine
            runs[side].append(fn(method, backbone, batch, size, steps))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    result = {"method": method, "backbone": backbone, "batch": batch, "size": size,
              "steps": steps, "threads": torch.get_num_threads(),
              "bare_ms": 1e3 * wall["bare"], "engine_ms": 1e3 * wall["engine"],
              "overhead": wall["engine"] / wall["bare"] - 1,
              "bare_cpu_ms": 1e3 * cpu["bare"], "engine_cpu_ms": 1e3 * cpu["engine"],
              "cpu_overhead": cpu["engine"] / cpu["bare"] - 1,
              "runs": {k: [w for w, _ in v] for k, v in runs.items()},
              "cpu_runs": {k: [c for _, c in v] for k, v in runs.items()}}
    print(f"{method} on {backbone}, batch {batch} × {size} px, {steps} steps, median of "
          f"{repeats} alternating runs ({result['threads']} threads):\n"
          f"                      wall ms/step   CPU ms/step\n"
          f"  bare PyTorch loop : {result['bare_ms']:12.2f}  {result['bare_cpu_ms']:12.2f}\n"
          f"  ltscale engine    : {result['engine_ms']:12.2f}  {result['engine_cpu_ms']:12.2f}\n"
          f"  overhead          : {100 * result['overhead']:+11.2f} % "
          f"{100 * result['cpu_overhead']:+11.2f} %")
    return result
