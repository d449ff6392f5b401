"""Checks made before anything is queued: a missing ``sbatch``, an unknown partition or an
unreachable tracking server stops ``ltscale submit`` with a message saying what to do, instead
of a job that fails minutes later on a compute node."""

from __future__ import annotations

import shutil
import subprocess

from ltscale.core.errors import LaunchError


def check_sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise LaunchError("sbatch not found on PATH: this machine is not a SLURM submit host. "
                          "Install slurm-client (or run on a login node), use --cluster local "
                          "to run here, or --dry-run to see what would be submitted")
    return path


def slurm_partitions() -> list[str]:
    """Partition names ``sinfo`` reports (the default one's ``*`` removed)."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot list SLURM partitions with sinfo: {exc}") from None
    if proc.returncode != 0:
        raise LaunchError(f"sinfo failed (exit {proc.returncode}): {proc.stderr.strip()}; is "
                          "slurmctld reachable from this host?")
    return [p.strip().rstrip("*") for p in proc.stdout.split() if p.strip()]


def check_partition(partition: str | None) -> None:
    if partition is None:
        return
    names = slurm_partitions()
    if partition not in names:
        raise LaunchError(f"--partition {partition}: no such partition; this cluster has "
                          f"{', '.join(names) or 'none'}")
