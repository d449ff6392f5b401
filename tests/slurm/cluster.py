"""Helpers for tests that launch jobs: a tiny recipe, the local SLURM cluster, job polling.

The SLURM tests need a cluster answering on this machine (``bash tools/slurm-local.sh``, which
CI runs through tools/test.sh). They skip only where SLURM is not installed at all; an installed
cluster that does not answer is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

needs_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None or shutil.which("scontrol") is None,
    reason="SLURM is not installed (no sbatch/scontrol on PATH): run `bash tools/slurm-local.sh` "
           "as root to install and start a one-node cluster; CI does")


def write_recipe(path: Path, idx: Path, out: Path, *, epochs: int, uri: str,
                 checkpoint_every: int = 3, experiment: str = "launch", **extra) -> Path:
    """A SimSiam pretraining recipe on ``idx`` small enough for a few seconds per epoch-set."""
    recipe = {
        "name": "launch", "seed": 0, "output_dir": str(out), "threads": 1, "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(idx)}, "shards": str(out.parent / "shards"),
                 "image_size": 8, "channels": 1, "mean": [0.5], "std": [0.25]},
        "manifest": {"imbalance": "none", "noise": "none"},
        "pretrain": {"method": {"name": "simsiam", "proj_dim": 16, "pred_dim": 8},
                     "backbone": {"name": "resnet_tiny"}, "epochs": epochs, "batch_size": 8,
                     "workers": 0, "checkpoint_every": checkpoint_every,
                     "knn": {"enabled": False}, "augment": {"preset": "cifar"}},
        "engine": {"timeout_s": 60},
        "tracking": {"uri": uri, "experiment": experiment}}
    for key, value in extra.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def ltscale(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "ltscale", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def job_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "jobs.jsonl").read_text().splitlines()]


def job_state(job_id: str) -> str | None:
    """SLURM's state of a job still in the queue (PENDING, RUNNING, …); None once it left."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip() or None


def wait_until(cond, timeout: float, what: str, poll: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def release(job_id: str) -> None:
    """A requeued job waits ~2 minutes (its BeginTime) before it may start again; tests let it
    start at once."""
    wait_until(lambda: job_state(job_id) == "PENDING", 60, f"job {job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                   timeout=30)


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.rsplit("-", 1)[1]) for p in run_dir.glob("checkpoint-*.pt"))


def final_state(run_dir: Path) -> dict:
    """The newest checkpoint of a stage folder (model, optimizer, step, …)."""
    import torch

    step = checkpoint_steps(run_dir)[-1]
    return torch.load(run_dir / f"checkpoint-{step:09d}.pt", map_location="cpu",
                      weights_only=False)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers equal bit for bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(got: dict, want: dict) -> None:
    """Two final checkpoints hold the same training state bit for bit: model, optimizer, loss
    scaler, sampler position, step and every rank's torch RNG. Not compared: the per-epoch
    history (timings; the means of an epoch that was cut average only the steps after the
    resume) and numpy's / Python's global RNGs, which training never draws from and which each
    process seeds from the OS."""
    for key in ("model", "optimizer", "backend", "sampler", "epoch", "step", "epoch_step",
                "fingerprint", "world_size"):
        assert_same_tensors(got[key], want[key], key)
    assert len(got["rng"]) == len(want["rng"])
    for rank, (a, b) in enumerate(zip(got["rng"], want["rng"])):
        assert_same_tensors(a["torch"], b["torch"], f"rng[{rank}].torch")
    assert [h["epoch"] for h in got["history"]] == [h["epoch"] for h in want["history"]]


def mlflow_runs(uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []
