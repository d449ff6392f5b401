"""sbatch scripts for users who launch without submitit: ``srun`` starts one ``torchrun`` per
node, torchrun starts one process per GPU and rendezvouses on the first node of the job.

The ``#SBATCH`` settings come from ``sbatch_directives`` — the same ones ``ltscale submit``
gives submitit — and the ltscale command line is the one a submitit task runs, so a script
rendered here and a ``submit`` of the same options queue the same work. Preemption works the
same way: SLURM signals the batch shell ``signal_delay_s`` before the limit, the trap requeues
the job, and the requeued job resumes from the newest checkpoint on disk.
"""

from __future__ import annotations

import shlex

from ltscale.launch.options import PREEMPT_SIGNAL, SubmitOptions, sbatch_directives

HEADER = """\
# ltscale: {what}
# Rendered by `ltscale submit … --sbatch FILE` (ltscale/launch/templates.py); the #SBATCH
# settings match what `ltscale submit` gives submitit for the same options."""

BODY = """\
set -euo pipefail
# the first node of the allocation hosts the rendezvous; the port is derived from the job id
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}

{select}
# preemption or the time limit: SLURM sends {signal} to this shell {delay} s early; requeue the
# job, and the requeued job resumes from the newest checkpoint
trap 'echo "ltscale: {signal} received, requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' {signal}

srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\
  {python} -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node={nproc} \\
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \\
  -m ltscale "${{ARGS[@]}}" &
wait $!
"""


def _args_line(argv: list[str]) -> str:
    return "ARGS=(" + " ".join(shlex.quote(a) for a in argv) + ")"


def _select(points: list[list[str]]) -> str:
    if len(points) == 1:
        return _args_line(points[0])
    lines = ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, argv in enumerate(points):
        lines.append(f"  {i}) {_args_line(argv)} ;;")
    lines.append('  *) echo "ltscale: no sweep point $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;')
    lines.append("esac")
    return "\n".join(lines)


def render_sbatch(opts: SubmitOptions, points: list[list[str]], *, python: str = "python",
                  logs: str = "slurm-%x-%j.out", threads: int = 4) -> str:
    """The batch script running ``ltscale ARGV`` for each argv in ``points`` (one job, or a job
    array with one task per point)."""
    if not points:
        raise ValueError("render_sbatch needs at least one command")
    d = sbatch_directives(opts, len(points))
    d["output"] = logs.replace("%j", "%A_%a") if len(points) > 1 else logs
    # the batch shell must receive the signal (B:) for the trap to requeue
    d["signal"] = f"B:{d['signal']}"
    d["ntasks-per-node"] = "1"
    if opts.cpus_per_task:
        d["cpus-per-task"] = str(opts.cpus_per_task * opts.ntasks_per_node)
    d["requeue"] = ""
    what = " ".join(points[0][:2]) + (f" (job array of {len(points)} sweep points)"
                                      if len(points) > 1 else "")
    lines = ["#!/bin/bash", HEADER.format(what=what)]
    for key in sorted(d):
        lines.append(f"#SBATCH --{key}" + (f"={d[key]}" if d[key] != "" else ""))
    lines.append("")
    lines.append(BODY.format(select=_select(points), python=shlex.quote(python),
                             nproc=opts.ntasks_per_node, signal=PREEMPT_SIGNAL,
                             delay=opts.signal_delay_s, threads=threads))
    return "\n".join(lines)


def parse_directives(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a batch script as ``{key: value}``."""
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out
