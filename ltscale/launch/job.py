"""The callable submitit runs in every task of an ``ltscale submit`` job.

It turns submitit's job environment into the variables ``torch.distributed`` reads (rank, world
size, local rank; the master is the first host of the job's node list, the port derived from the
job id), points MLflow run continuation at a per-job ledger, and runs the ltscale command.

Preemption and time limits: the signal SLURM sends before the limit becomes a stop request
(``ltscale.engine.preempt``): the training loop writes a checkpoint of the current step on every
rank and stops; then submitit's handler runs on rank 0 and calls ``checkpoint()``, which returns a
fresh submission of the same command, and requeues the job (outside a training loop the signal
goes to submitit's handler at once). The command holds no training state: the requeued job's loop
resumes from the newest complete checkpoint on disk, not from anything pickled at submission
time, and — the loop being bit-exact on resume — ends with the same weights as an uninterrupted
run. Its MLflow runs continue (same run ids, no step
logged twice) through the ledger.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import threading
from pathlib import Path

from ltscale.core.dist_env import SLURM_PORT_BASE, SLURM_PORT_SPAN
from ltscale.track.ledger import LEDGER_ENV


def master_port(job_id: str) -> int:
    """A port every task of the job derives alike: 20000 + (numeric job id mod 20000)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return SLURM_PORT_BASE + int(digits) % SLURM_PORT_SPAN


def dist_environ(env) -> dict[str, str]:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` from a submitit
    ``JobEnvironment`` (SLURM's or the local executor's)."""
    hosts = list(env.hostnames)
    job_id = os.environ.get("SLURM_JOB_ID") or str(env.job_id)
    return {"RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": os.environ.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT") or str(master_port(job_id))}


def _leave_after_rank0(env, grace_s: float = 30.0) -> None:
    """What ranks other than 0 do when the job is signalled. submitit only logs it there; they
    must keep going — rank 0 handles the signal once it is out of the collective they share,
    and exiting first would fail that collective under it. Rank 0's exit then makes their next
    collective fail; a rank still alive ``grace_s`` later (stuck elsewhere) exits hard, so the
    local executor, which restarts a job only once all its tasks have ended, is not held up."""
    sig = env._usr_sig()
    logged = signal.getsignal(sig)

    def arm(signum, frame):
        if callable(logged):
            logged(signum, frame)
        timer = threading.Timer(grace_s, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    signal.signal(sig, arm)


class JobFailed(RuntimeError):
    """The ltscale command of a task exited with an error status."""


# the command a job runs, named rather than imported: the launcher is a library the CLI uses
ENTRY_POINT = "ltscale.cli:main"


class LtscaleJob:
    """``ltscale ARGV`` in a submitit task; ``folder`` holds the per-job MLflow ledgers."""

    def __init__(self, argv: list[str], folder: str | os.PathLike):
        self.argv = [str(a) for a in argv]
        self.folder = str(folder)

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(dist_environ(env))
        if env.global_rank != 0:
            _leave_after_rank0(env)
        ledger = Path(self.folder) / f"{env.job_id}.mlflow-runs.json"
        os.environ[LEDGER_ENV] = str(ledger)
        from ltscale.engine import preempt

        module, _, name = ENTRY_POINT.partition(":")
        main = getattr(importlib.import_module(module), name)

        # the time-limit signal becomes a stop request the training loop honours at the next
        # step, after writing that step's checkpoint on every rank; then submitit's own handler
        # (installed before this call) requeues the job. Outside a training loop the signal goes
        # straight to that handler.
        preempt.watch(env._usr_sig())
        try:
            rc = main(self.argv)
        except preempt.Preempted:
            preempt.fallback()  # rank 0: checkpoint() + requeue + exit; other ranks: return here
            if env.global_rank != 0 and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                # a task that ends with an error before rank 0's `scontrol requeue` ends the
                # job step, and SLURM marks the job FAILED instead of requeuing it: wait for
                # the requeue to end this task (the timer the signal armed is the backstop)
                threading.Event().wait()
            raise
        if rc:
            raise JobFailed(f"ltscale {' '.join(self.argv)} exited with status {rc} on rank "
                            f"{env.global_rank} of job {env.job_id}")
        return {"argv": self.argv, "job_id": str(env.job_id), "rank": env.global_rank}

    def checkpoint(self, *args, **kwargs):
        """Requeue the same command: it resumes from the newest checkpoint on disk."""
        import submitit

        return submitit.helpers.DelayedSubmission(LtscaleJob(self.argv, self.folder))

    def __repr__(self) -> str:
        return f"LtscaleJob({' '.join(self.argv)})"
