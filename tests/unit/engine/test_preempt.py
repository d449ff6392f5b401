"""A watched signal stops the loop before the next step with that step's checkpoint; the resumed
run ends equal to an uninterrupted one. Without a running loop the earlier handler runs at once."""

import os
import signal

import pytest
import torch

from ltscale.engine import preempt
from ltscale.engine.backend import LocalBackend
from ltscale.engine.checkpoint import checkpoint_files, load_checkpoint
from ltscale.engine.loop import LoopConfig, fit
from ltscale.track import NullTracker
from tests.unit.engine.test_loop import Regress, _sgd, _toy_data

SIG = signal.SIGUSR2


class SignalAt(Regress):
    """Sends the watched signal to its own process during step ``at`` (1-based)."""

    def __init__(self, at=None):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), SIG)
        return super().forward(batch)


@pytest.fixture
def watched():
    calls = []
    previous = signal.signal(SIG, lambda signum, frame: calls.append(signum))
    preempt.watch(SIG)
    yield calls
    preempt.reset()
    signal.signal(SIG, previous)


def _fit(tmp_path, at=None, lines=None):
    torch.manual_seed(0)
    loader, sampler = _toy_data()
    model = SignalAt(at)
    state = fit(model, loader, sampler, _sgd(model),
                LoopConfig(epochs=3, progress=False, schedule="constant", keep=10),
                LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt",
                fingerprint="p")
    return model, state, lines


def test_a_signal_mid_epoch_saves_that_step_and_the_resume_ends_equal(tmp_path, watched,
                                                                     ltscale_log):
    with pytest.raises(preempt.Preempted) as stop:
        _fit(tmp_path / "a", at=11)  # during step 11 (epoch 2 of 8-step epochs)
    assert stop.value.code == 143
    saved = load_checkpoint(stop.value.checkpoint)
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (11, 1, 3)
    assert [p.name for p in checkpoint_files(tmp_path / "a" / "ck.pt")][:2] == [
        "ck-000000011.pt", "ck-000000008.pt"]
    assert "stopped on request at epoch 2, step 11" in str(stop.value)
    assert watched == []  # a loop was running: no fallback to the earlier handler
    preempt.reset()
    preempt.watch(SIG)
    resumed, state, lines = _fit(tmp_path / "a", lines=ltscale_log)
    assert any("resuming from ck-000000011.pt" in line for line in lines)
    straight, _, _ = _fit(tmp_path / "b")
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v)
    assert state.step == 24


def test_a_signal_at_an_epoch_end_stops_after_that_epochs_checkpoint(tmp_path, watched):
    with pytest.raises(preempt.Preempted) as stop:
        _fit(tmp_path, at=8)  # the last step of epoch 1
    assert stop.value.checkpoint.name == "ck-000000008.pt"
    assert [p.name for p in checkpoint_files(tmp_path / "ck.pt")] == ["ck-000000008.pt"]


def test_without_a_running_loop_the_earlier_handler_runs_at_once(watched):
    os.kill(os.getpid(), SIG)
    assert watched == [SIG] and not preempt.requested()
    preempt.fallback()  # what a submit job does after Preempted: the earlier handler again
    assert watched == [SIG, SIG]
