"""Preemption and time limits through submitit: the job is signalled, submitit's checkpoint hook
requeues it, and the requeued job resumes from the newest checkpoint on disk — not from anything
pickled at submission — ending bit-identical to an uninterrupted run and continuing its one
MLflow run without a step logged twice.

* submitit's LocalExecutor with a two-minute limit, whose warning signal (USR2, sent
  ``signal_delay_s`` before the limit) the test delivers to the tasks as soon as an attempt has
  written a checkpoint — twice — so each attempt is cut mid-training on a fast or a slow machine;
* a real SLURM requeue on the local cluster (tools/slurm-local.sh): ``scancel --signal=USR2``
  (what SLURM sends before a time limit; submitit's signal) and then ``scontrol requeue``.

Both are 2-task gloo jobs compared with one uninterrupted 2-task job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from tests.conftest import make_idx
from tests.slurm.cluster import (
    REPO,
    assert_same_training_state,
    checkpoint_steps,
    final_state,
    job_records,
    job_state,
    ltscale,
    mlflow_runs,
    needs_slurm,
    release,
    wait_until,
    write_recipe,
)

pytestmark = pytest.mark.reliability

EPOCHS = 20          # 120 images, 2 ranks × batch 8: 7 steps per epoch
TOTAL = 7 * EPOCHS
LOG_EVERY = 10       # the loop logs train/* every 10 steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, one tracking store and the uninterrupted 2-task run (LocalExecutor, no limit hit)."""
    tmp = tmp_path_factory.mktemp("preempt")
    idx = make_idx(tmp / "idx", train=120, test=30)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    recipe = write_recipe(tmp / "ref.yaml", idx, tmp / "ref", epochs=EPOCHS, uri=uri,
                          experiment="reference")
    proc = ltscale("submit", str(recipe), "--command", "pretrain", "--cluster", "local",
                   "--tasks-per-node", "2", "--time", "10", "--folder", str(tmp / "sub-ref"),
                   "--wait", cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert final_state(tmp / "ref" / "pretrain")["step"] == TOTAL
    return {"tmp": tmp, "idx": idx, "uri": uri}


def ltscale_popen(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ltscale", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _check_one_continued_run(uri: str, experiment: str) -> None:
    (run,) = mlflow_runs(uri, experiment)
    assert run.info.status == "FINISHED"
    history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    steps = Counter(m.step for m in history)
    assert [s for s, n in steps.items() if n > 1] == [], "a step was logged twice"
    assert sorted(steps) == list(range(LOG_EVERY, TOTAL + 1, LOG_EVERY))


def _resumes(log: str) -> list[int]:
    return [int(line.rsplit("step ", 1)[1].rstrip(")"))
            for line in log.splitlines() if "pretrain: resuming from" in line]


def _stops(log: str) -> list[int]:
    """Steps at which the loop saved a checkpoint on the signal and stopped."""
    return [int(line.split(", step ", 1)[1].split(";", 1)[0])
            for line in log.splitlines() if "pretrain: stopped on request" in line]


def _task_pids(controller: int) -> list[int]:
    """The task processes a LocalExecutor controller started (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == controller:
                pids.append(int(entry.name))
    return pids


def test_local_executor_time_limit_requeues_until_done(setup):
    tmp = setup["tmp"]
    recipe = write_recipe(tmp / "local.yaml", setup["idx"], tmp / "local", epochs=EPOCHS,
                          uri=setup["uri"], experiment="local-timeout")
    stage, folder = tmp / "local" / "pretrain", tmp / "sub-local"
    proc = ltscale_popen("submit", str(recipe), "--command", "pretrain", "--cluster", "local",
                         "--tasks-per-node", "2", "--time", "2", "--signal-delay", "30",
                         "--max-requeue", "10", "--folder", str(folder), "--wait", cwd=tmp)
    try:
        job = wait_until(lambda: (folder / "jobs.jsonl").exists() and job_records(folder),
                         120, "the job record")[0]["job_id"]
        log = folder / job / f"{job}_0_log.err"
        # The limit's warning signal — what the executor's timer sends ``signal_delay`` before the
        # limit — delivered to the tasks as soon as an attempt has written a checkpoint of its
        # own, so every attempt is cut mid-training whatever this machine's speed; submitit
        # counts each as a time-out. Twice, then the job may finish.
        newest = 0
        for cut in range(2):
            wait_until(lambda: [s for s in checkpoint_steps(stage) if newest < s < TOTAL], 180,
                       f"a new checkpoint in attempt {cut + 1}")
            for pid in _task_pids(int(job)):
                os.kill(pid, signal.SIGUSR2)
            resumed = wait_until(lambda: len(_resumes(log.read_text())) > cut and
                                 _resumes(log.read_text()), 180, f"resume {cut + 1}")
            newest = resumed[-1]
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    text = log.read_text()
    assert text.count("this job is timed-out") == 2
    resumed = _resumes(text)
    assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < TOTAL, text[-3000:]
    assert _stops(text) == resumed, text[-3000:]  # each resume starts where the signal stopped it
    assert_same_training_state(final_state(stage), final_state(tmp / "ref" / "pretrain"))
    _check_one_continued_run(setup["uri"], "local-timeout")


@needs_slurm
def test_slurm_signal_then_requeue_resume_bit_identically(setup):
    tmp = setup["tmp"]
    recipe = write_recipe(tmp / "slurm.yaml", setup["idx"], tmp / "slurm", epochs=EPOCHS,
                          uri=setup["uri"], experiment="slurm-requeue")
    proc = ltscale("submit", str(recipe), "--command", "pretrain", "--tasks-per-node", "2",
                   "--partition", "debug", "--time", "10", "--folder", str(tmp / "sub-slurm"),
                   cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = job_records(tmp / "sub-slurm")[0]["job_id"]
    stage = tmp / "slurm" / "pretrain"

    # 1: the signal SLURM sends before a time limit: submitit's hook requeues the job
    wait_until(lambda: checkpoint_steps(stage), 180, "the first checkpoint")
    assert job_state(job) == "RUNNING"
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    release(job)
    wait_until(lambda: job_state(job) == "RUNNING", 60, "the requeued job to start")
    first = checkpoint_steps(stage)[-1]
    # 2: an administrator's requeue, once the resumed job wrote a newer checkpoint
    wait_until(lambda: checkpoint_steps(stage)[-1] > first, 180,
               "a checkpoint after the first resume")
    assert checkpoint_steps(stage)[-1] < TOTAL, "the job ended before the second requeue"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    release(job)
    wait_until(lambda: job_state(job) is None, 300, f"job {job} to finish")

    log = (tmp / "sub-slurm" / job / f"{job}_0_log.err").read_text()
    resumed = _resumes(log)
    assert len(resumed) == 2 and 0 < resumed[0] < resumed[1], log[-3000:]
    # the signal's stop saved the step it reached; the administrator's requeue gives no warning,
    # so the second resume is from a periodic checkpoint
    assert _stops(log) == resumed[:1], log[-3000:]
    assert_same_training_state(final_state(stage), final_state(tmp / "ref" / "pretrain"))
    _check_one_continued_run(setup["uri"], "slurm-requeue")
