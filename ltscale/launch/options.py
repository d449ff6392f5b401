"""What a submission asks SLURM for, in one place for both launch paths.

``SubmitOptions`` holds the resources of ``ltscale submit`` (nodes, GPUs, partition, time, …);
``sbatch_directives`` turns them into the ``#SBATCH`` settings that both submitit's generated
script and the srun + torchrun template under ``slurm/`` carry, so the two cannot drift apart
(tests/unit/launch/test_submit.py renders both and compares them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ltscale.core.errors import RecipeError

# the signal SLURM sends ``signal_delay_s`` before the time limit; submitit's default (USR1 is
# avoided because NCCL may install its own handler for it)
PREEMPT_SIGNAL = "USR2"


def parse_time(text: str | int) -> int:
    """SLURM time limits → minutes: ``90``, ``1:30:00``, ``45:00`` (mm:ss), ``2-00:00:00``."""
    value = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not m:
        raise RecipeError(f"--time {text!r}: use minutes (90), HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None and int(a) > 23:
        raise RecipeError(f"--time {text!r}: hours must be 0-23 after a day count (D-HH:MM:SS)")
    # MM:SS has seconds in b; HH:MM[:SS] (and D-HH:MM) minutes in b and seconds in c
    if any(v is not None and int(v) > 59 for v in (b, c)):
        raise RecipeError(f"--time {text!r}: minutes and seconds must be 0-59 (minutes, MM:SS, "
                          "HH:MM:SS or D-HH:MM:SS)")
    if days is None and b is None:
        minutes = int(a)
    elif c is None and days is None:        # MM:SS
        minutes = int(a) + (int(b) > 0)
    else:                                    # [D-]HH:MM[:SS]
        minutes = int(days or 0) * 1440 + int(a) * 60 + int(b or 0) + (int(c or 0) > 0)
    if minutes < 1:
        raise RecipeError(f"--time {text!r}: the limit must be at least one minute")
    return minutes


@dataclass
class SubmitOptions:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None      # None: one task per GPU (one task without GPUs)
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None                 # per node, SLURM syntax (e.g. 64G)
    name: str = "ltscale"
    signal_delay_s: int = 90               # seconds between the warning signal and the limit
    max_requeue: int = 3                   # timeouts / preemptions a job may survive
    array_parallelism: int = 64
    extra: dict[str, str] = field(default_factory=dict)  # further #SBATCH settings

    def __post_init__(self):
        for name in ("nodes", "time_min", "array_parallelism"):
            if getattr(self, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be at least 1")
        if self.gpus_per_node < 0:
            raise RecipeError("--gpus-per-node must not be negative")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise RecipeError("--tasks-per-node must be at least 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise RecipeError(f"--cpus-per-task {self.cpus_per_task}: must be at least 1")
        if self.max_requeue < 0:
            raise RecipeError(f"--max-requeue {self.max_requeue}: must be 0 (never requeue) or "
                              "more")
        if not 0 <= self.signal_delay_s < self.time_min * 60:
            raise RecipeError(f"--signal-delay {self.signal_delay_s}: must be in [0, "
                              f"{self.time_min * 60}) seconds, below the --time limit of "
                              f"{self.time_min} min")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", self.mem.strip().upper()):
            raise RecipeError(f"--mem {self.mem!r}: use SLURM's syntax, e.g. 64G or 4000M")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,128}", self.name):
            raise RecipeError(f"--name {self.name!r}: use letters, digits, . _ + - (at most "
                              "128)")

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def sbatch_directives(opts: SubmitOptions, array_size: int | None = None) -> dict[str, str]:
    """The scheduling settings shared by every launch path, as ``--key: value`` strings (no
    ``ntasks-per-node``/``cpus-per-task``: submitit starts one task per process, the template
    one torchrun per node)."""
    d = {"job-name": opts.name, "nodes": str(opts.nodes), "time": str(opts.time_min),
         "signal": f"{PREEMPT_SIGNAL}@{opts.signal_delay_s}", "open-mode": "append"}
    if opts.gpus_per_node:
        d["gpus-per-node"] = str(opts.gpus_per_node)
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(opts, key):
            d[key] = str(getattr(opts, key))
    if array_size and array_size > 1:
        d["array"] = f"0-{array_size - 1}%{min(array_size, opts.array_parallelism)}"
    d.update(opts.extra)
    return d
