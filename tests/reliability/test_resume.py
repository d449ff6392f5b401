"""Determinism and exact resume under real faults: 2 ranks under torchrun, SIGKILL, relaunch.

The job (``train.py``): 48 JPEGs, global batch 8 (4 per rank), 3 epochs of 6 steps, dropout and
augmentation on, 2 loader workers per rank, a checkpoint every 4 steps and at each epoch end
(files at steps 4, 6, 8, 12, 16, 18), the newest 3 kept. Every relaunch must continue the
uninterrupted reference run bit for bit: the same loss and the same sample positions at every
later step, and the same final model and optimizer state (``torch.equal``).
"""

from __future__ import annotations

import pytest
import torch

from ltscale.engine.checkpoint import checkpoint_files, load_checkpoint
from tests.reliability.conftest import (
    EPOCHS,
    STEPS_PER_EPOCH,
    Job,
    assert_same_state,
    load_state,
    read_steps,
)

pytestmark = pytest.mark.reliability
TOTAL = EPOCHS * STEPS_PER_EPOCH


def _steps_of(out, tag="run"):
    return {r: read_steps(out, tag, r) for r in (0, 1)}


def _assert_continues(reference, out, tag: str, first: int) -> None:
    """The run ``tag`` in ``out`` logged steps ``first``..TOTAL on both ranks, each equal (loss,
    positions, labels) to the reference run's step."""
    for rank in (0, 1):
        ref = {s["step"]: s for s in read_steps(reference, "run", rank)}
        got = read_steps(out, tag, rank)
        assert [s["step"] for s in got] == list(range(first, TOTAL + 1)), (rank, got[:2])
        for s in got:
            assert s == ref[s["step"]], (rank, s["step"])
    assert_same_state(load_state(out / "final.pt"), load_state(reference / "final.pt"))


def _steps_on_disk(out) -> list[int]:
    return [int(p.stem.rsplit("-", 1)[1]) for p in checkpoint_files(out / "ck.pt")]


def test_two_runs_with_one_seed_are_bit_identical(clean_data, reference, tmp_path):
    again = Job(clean_data, tmp_path).finish()
    for rank in (0, 1):
        ref = read_steps(reference, "run", rank)
        assert len(ref) == TOTAL
        assert again.steps(rank) == ref  # every loss (exact float) and every position
    # the two ranks read disjoint halves of each global batch
    r0, r1 = _steps_of(reference).values()
    assert all(not set(a["positions"]) & set(b["positions"]) for a, b in zip(r0, r1))
    assert_same_state(load_state(tmp_path / "final.pt"), load_state(reference / "final.pt"))
    last = load_checkpoint(tmp_path / "ck-000000018.pt")
    for k, v in load_checkpoint(reference / "ck-000000018.pt")["model"].items():
        assert torch.equal(v, last["model"][k])


def test_sigkill_of_one_rank_mid_epoch_then_relaunch_continues_exactly(clean_data, reference,
                                                                      tmp_path):
    killed = Job(clean_data, tmp_path, tag="killed", env={"RELI_PAUSE": "after:10"})
    killed.wait_for("paused")
    killed.kill_rank(1)  # the rank that is not paused: it waits in the step-11 all-reduce
    assert killed.wait(60) != 0
    assert _steps_on_disk(tmp_path) == [8, 6, 4]  # step 10 is mid-epoch 2, after ck 8
    assert [s["step"] for s in killed.steps(0)] == list(range(1, 11))
    assert killed.steps(0) == read_steps(reference, "run", 0)[:10]
    before = load_checkpoint(tmp_path / "ck-000000008.pt")

    resumed = Job(clean_data, tmp_path, tag="resumed").finish()
    assert "resuming from ck-000000008.pt (epoch 1, step 8)" in resumed.output()
    _assert_continues(reference, tmp_path, "resumed", first=9)
    assert _steps_on_disk(tmp_path) == [18, 16, 12]
    # the state the relaunch started from is the checkpoint's, exactly
    assert_same_state(load_state(tmp_path / "resumed.pt"), before)


@pytest.mark.parametrize("pause,kill,resumed_from", [
    ("epoch_end:1", 1, 4),  # the last step of epoch 1 is done, its checkpoint is not written
    ("before:7", 0, 6),     # the epoch-1 checkpoint is written, epoch 2 has not started
])
def test_sigkill_at_an_epoch_boundary_then_relaunch_continues_exactly(
        clean_data, reference, tmp_path, pause, kill, resumed_from):
    killed = Job(clean_data, tmp_path, tag="killed", env={"RELI_PAUSE": pause})
    killed.wait_for("paused")
    killed.kill_rank(kill)
    assert killed.wait(60) != 0
    assert _steps_on_disk(tmp_path)[0] == resumed_from
    assert [s["step"] for s in killed.steps(0)] == list(range(1, STEPS_PER_EPOCH + 1))
    before = load_checkpoint(tmp_path / f"ck-{resumed_from:09d}.pt")
    resumed = Job(clean_data, tmp_path, tag="resumed").finish()
    assert f"resuming from ck-{resumed_from:09d}.pt" in resumed.output()
    assert_same_state(load_state(tmp_path / "resumed.pt"), before)
    _assert_continues(reference, tmp_path, "resumed", first=resumed_from + 1)


def test_kill_during_a_checkpoint_save_resumes_from_the_previous_complete_one(
        clean_data, reference, tmp_path):
    killed = Job(clean_data, tmp_path, tag="killed", env={"RELI_PARTIAL_SAVE": "8"})
    killed.wait_for("paused")  # half of checkpoint 8's bytes are on disk
    before = load_checkpoint(tmp_path / "ck-000000006.pt")
    killed.kill_rank(0)
    assert killed.wait(60) != 0
    # the half-written bytes never carry a checkpoint's name
    assert not (tmp_path / "ck-000000008.pt").exists()
    assert _steps_on_disk(tmp_path) == [6, 4]
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".ck-000000008.pt")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size

    resumed = Job(clean_data, tmp_path, tag="resumed").finish()
    assert "resuming from ck-000000006.pt" in resumed.output()
    assert_same_state(load_state(tmp_path / "resumed.pt"), before)
    _assert_continues(reference, tmp_path, "resumed", first=7)
    # keep-last-3: the three newest complete checkpoints, each loadable; no temp file left
    assert _steps_on_disk(tmp_path) == [18, 16, 12]
    for step in (18, 16, 12):
        assert load_checkpoint(tmp_path / f"ck-{step:09d}.pt")["step"] == step
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def _global_batches(out, tag: str, ranks) -> dict[int, list[int]]:
    """Step → the sorted positions all ranks of run ``tag`` read in it."""
    batches: dict[int, list[int]] = {}
    for rank in ranks:
        for s in read_steps(out, tag, rank):
            batches.setdefault(s["step"], []).extend(s["positions"])
    return {k: sorted(v) for k, v in batches.items()}


def test_save_on_two_ranks_resume_on_one_and_back(clean_data, reference_nodrop, tmp_path):
    """World size 2 → 1 → 2 with the global batch kept (8 = 2 × 4 = 1 × 8).

    The resume rule (``ltscale/data/sampling.py``): the sampler's state is the number of
    *global* slots of the epoch's order consumed, whatever the world size; a relaunch on ``W``
    ranks starts at the first slot no rank read and deals the rest round-robin (rank ``r``
    takes slots ``start + r, start + r + W, …``). So each relaunch reads exactly the global
    batches the reference run reads at those steps: no sample is repeated or skipped."""
    args = ("--dropout", "0")
    first = Job(clean_data, tmp_path, tag="w2a", args=args, env={"RELI_PAUSE": "after:5"})
    first.wait_for("paused")
    first.kill_rank(1)
    assert first.wait(60) != 0
    assert _steps_on_disk(tmp_path)[0] == 4

    one = Job(clean_data, tmp_path, nproc=0, tag="w1", args=args, env={"RELI_PAUSE": "after:10"})
    one.wait_for("paused")
    assert_same_state(load_state(tmp_path / "resumed.pt"),
                      load_checkpoint(tmp_path / "ck-000000004.pt"))
    one.kill_rank(0)
    assert one.wait(60) != 0
    ck8 = load_checkpoint(tmp_path / "ck-000000008.pt")
    assert ck8["world_size"] == 1

    Job(clean_data, tmp_path, tag="w2b", args=args).finish()
    assert_same_state(load_state(tmp_path / "resumed.pt"), ck8)

    ref = _global_batches(reference_nodrop, "run", (0, 1))
    segments = [(_global_batches(tmp_path, "w2a", (0, 1)), range(1, 6)),
                (_global_batches(tmp_path, "w1", (0,)), range(5, 11)),
                (_global_batches(tmp_path, "w2b", (0, 1)), range(9, TOTAL + 1))]
    for got, steps in segments:
        assert sorted(got) == list(steps)
        for step in steps:
            assert got[step] == ref[step], step
    # per epoch, the steps actually kept (the last writer of each step) read every sample once
    final = {**segments[0][0], **segments[1][0], **segments[2][0]}
    for epoch in range(EPOCHS):
        read = [p for s in range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1)
                for p in final[s]]
        assert sorted(read) == list(range(48))
    assert ck8["sampler"].get("global_consumed") == 16  # 2 global batches of epoch 2
    # the same arithmetic on other ranks: equal up to float summation order
    assert_same_state(load_state(tmp_path / "final.pt"), load_state(reference_nodrop / "final.pt"),
                      exact=False)
