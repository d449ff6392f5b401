"""A failing rank ends the whole job; uneven data never hangs; a non-finite loss stops training
naming the step and the last good checkpoint. Real torchrun jobs, 2 ranks on gloo."""

from __future__ import annotations

import time

import pytest

from ltscale.engine.checkpoint import checkpoint_files, load_checkpoint
from tests.conftest import make_jpeg_dataset
from tests.reliability import train
from tests.reliability.conftest import Data, Job, alive, descendants, load_state, read_steps

pytestmark = pytest.mark.reliability


def test_one_rank_raises_and_the_job_ends_nonzero_within_60s_leaving_no_process(
        clean_data, tmp_path):
    job = Job(clean_data, tmp_path, env={"RELI_RAISE": "8@1"})
    job.wait_for("ready")
    # torchrun's agent, both ranks and their 2 loader workers each, at the moment of failure
    procs = [job.proc.pid, *descendants(job.proc.pid)]
    assert len(procs) >= 1 + 2 + 4, procs
    (tmp_path / "go").write_text("")
    rc = job.wait(60)
    raised = float(job.wait_for("raised").read_text())
    assert rc != 0
    assert "injected failure on rank 1 at step 8" in job.output()
    deadline = raised + 60
    while any(alive(p) for p in procs) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in procs if alive(p)]
    assert not left, f"processes still running {time.time() - raised:.1f} s after the raise: {left}"
    assert time.time() - raised < 60


def test_a_nan_loss_on_one_rank_stops_the_job_naming_the_step_and_last_checkpoint(
        clean_data, tmp_path):
    job = Job(clean_data, tmp_path, env={"RELI_NAN": "11@1"})
    assert job.wait(120) != 0
    out = job.output()
    last = tmp_path / "ck-000000008.pt"
    assert "loss is nan at epoch 2, step 11" in out, out[-3000:]
    assert f"Last good checkpoint: {last}" in out
    assert load_checkpoint(last)["step"] == 8
    assert checkpoint_files(tmp_path / "ck.pt")[0] == last  # nothing written after the NaN
    assert [s["step"] for s in read_steps(tmp_path, "run", 1)] == list(range(1, 11))


def test_an_inf_loss_stops_training_in_one_process(clean_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RELI_INF", "3")
    with pytest.raises(FloatingPointError,
                       match=rf"loss is inf at epoch 1, step 3; .*Last good checkpoint: "
                             rf"{tmp_path}/ck-000000002\.pt"):
        train.main(["--data", str(clean_data.shards), "--manifest", str(clean_data.manifest),
                    "--out", str(tmp_path), "--checkpoint-every", "2", "--workers", "0"])
    assert [int(p.stem[3:]) for p in checkpoint_files(tmp_path / "ck.pt")] == [2]


def test_uneven_data_and_skipped_samples_give_equal_step_counts_and_no_hang(tmp_path):
    """45 samples on 2 ranks × 4 (the epoch is cut to 5 global batches), and a corrupt JPEG
    skipped by one rank only: both ranks take exactly the same steps and the job finishes."""
    data = Data(*make_jpeg_dataset(tmp_path / "data", 15, corrupt_key="bee_004"))
    job = Job(data, tmp_path / "run", args=("--on-error", "skip"))
    job.finish(120)
    r0, r1 = read_steps(job.out, "run", 0), read_steps(job.out, "run", 1)
    assert [s["step"] for s in r0] == [s["step"] for s in r1] == list(range(1, 16))
    sizes = [(len(a["positions"]), len(b["positions"])) for a, b in zip(r0, r1)]
    assert (3, 4) in sizes or (4, 3) in sizes  # one rank had a shorter batch at some step
    assert all(set(s) <= {3, 4} for s in sizes)
    # every epoch reads 5 global batches of 8: what was not trained on was skipped, and counted
    history = load_state(job.out / "final.pt")["history"]
    for epoch, record in enumerate(history):
        trained = sum(len(s["positions"]) for s in r0 + r1 if s["epoch"] == epoch)
        assert trained + record["data/skipped"] == 40
    assert sum(h["data/skipped"] for h in history) >= 1
    assert "skipped 1 unreadable samples: bee_bee_004" in job.output()
