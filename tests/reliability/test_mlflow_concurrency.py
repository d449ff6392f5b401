"""MLflow under concurrency and faults, in real processes on one SQLite store: several writers
at once lose no row and raise no lock error (the store is even created by them at the same
time); an exception inside a run marks it FAILED with the error; a process killed mid-run and
started again with the same ledger (what a requeued job does) continues the same run without
logging any step twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from tests.slurm.cluster import wait_until, write_recipe

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys, time
    from ltscale.track import MlflowTracker
    from ltscale.track.ledger import RunLedger
    uri, name, steps, start_at, ledger, first = sys.argv[1:7]
    steps, first = int(steps), int(first)
    while time.time() < float(start_at):   # every writer starts at the same moment
        time.sleep(0.005)
    tracker = MlflowTracker(uri, "concurrent", ledger=RunLedger(ledger) if ledger != "-" else None)
    with tracker.run(name, tags={"ltscale.stage": "pipeline", "writer": name}):
        tracker.log_params({f"p{i}": i for i in range(40)})
        with tracker.run("child", nested=True, tags={"ltscale.stage": "pretrain"}):
            for step in range(first, steps + 1):
                tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.1,
                                     "epoch/seconds": float(step)}, step=step)
                print(f"step {step}", flush=True)
    print("done", flush=True)
""")


def _writer(uri, name, steps, start_at, ledger="-", first=1, **kw):
    return subprocess.Popen([sys.executable, "-c", WRITER, uri, name, str(steps), str(start_at),
                             str(ledger), str(first)], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
                            **kw)


def test_concurrent_writers_lose_no_rows_and_hit_no_lock_errors(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # created by the writers themselves
    n, steps = 4, 60
    start_at = time.time() + 6  # after every interpreter has imported mlflow
    procs = [_writer(uri, f"w{i}", steps, start_at) for i in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "locked" not in err.lower() and out.strip().endswith("done")
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["ltscale.stage"] == "pipeline"]
    children = [r for r in runs if r.data.tags["ltscale.stage"] == "pretrain"]
    assert sorted(r.data.tags["writer"] for r in parents) == [f"w{i}" for i in range(n)]
    assert len(children) == n and all(r.info.status == "FINISHED" for r in runs)
    for p in parents:
        assert len(p.data.params) == 40
    for c in children:
        for key in ("train/loss", "train/lr", "epoch/seconds"):
            history = client.get_metric_history(c.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, steps + 1)), key


def test_an_exception_in_a_stage_marks_its_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-such-idx", tmp_path / "out",
                          epochs=1, uri=uri, experiment="failing")
    proc = subprocess.run([sys.executable, "-m", "ltscale", "pretrain", str(recipe)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "no-such-idx" in proc.stderr
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["ltscale.error"].startswith("DataError: ")
    assert "no-such-idx" in run.data.tags["ltscale.error"]


def test_a_killed_and_restarted_process_continues_its_run_without_duplicates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = tmp_path / "job.mlflow-runs.json"
    first = _writer(uri, "job", 10_000, time.time(), ledger)
    lines: list[str] = []

    def reached_40():
        lines.append(first.stdout.readline())
        return lines[-1].startswith("step 40")

    wait_until(reached_40, 240, "the first attempt to log step 40", poll=0)
    first.send_signal(signal.SIGKILL)  # no clean-up at all: the runs stay RUNNING
    first.wait(30)
    # the restarted attempt resumes from its "checkpoint" at step 25 and runs to step 80
    second = _writer(uri, "job", 80, time.time(), ledger, first=25)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    child = next(r for r in runs if r.data.tags["ltscale.stage"] == "pretrain")
    steps = Counter(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
    assert sorted(steps) == list(range(1, 81)) and set(steps.values()) == {1}
