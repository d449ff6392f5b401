"""The exact-resume fault of ``test_resume.py`` on the DeepSpeed backend (ZeRO-2, fp32, CPU
accelerator, gloo): SIGKILL one rank mid-epoch, relaunch, and every later step's loss and
positions and the final weights equal the uninterrupted DeepSpeed run's."""

from __future__ import annotations

import pytest
import torch

from ltscale.engine.checkpoint import checkpoint_files
from tests.reliability.conftest import EPOCHS, STEPS_PER_EPOCH, Job, load_state, read_steps

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'ltscale[deepspeed]')")
pytestmark = pytest.mark.reliability

ARGS = ("--backend", "deepspeed")
ENV = {"DS_ACCELERATOR": "cpu"}
TOTAL = EPOCHS * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def ds_reference(clean_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds-reference")
    Job(clean_data, out, env=ENV, args=ARGS).finish(300)
    return out


def test_deepspeed_zero2_sigkill_mid_epoch_then_relaunch_continues_exactly(
        clean_data, ds_reference, tmp_path):
    killed = Job(clean_data, tmp_path, tag="killed", env=ENV | {"RELI_PAUSE": "after:10"},
                 args=ARGS)
    killed.wait_for("paused", timeout=240)
    killed.kill_rank(1)
    assert killed.wait(90) != 0
    assert [int(p.stem[3:]) for p in checkpoint_files(tmp_path / "ck.pt")][0] == 8
    resumed = Job(clean_data, tmp_path, tag="resumed", env=ENV, args=ARGS).finish(300)
    assert "resuming from ck-000000008.pt" in resumed.output()
    for rank in (0, 1):
        ref = {s["step"]: s for s in read_steps(ds_reference, "run", rank)}
        got = read_steps(tmp_path, "resumed", rank)
        assert [s["step"] for s in got] == list(range(9, TOTAL + 1))
        for s in got:
            assert s == ref[s["step"]], (rank, s["step"])
    final, ref = load_state(tmp_path / "final.pt"), load_state(ds_reference / "final.pt")
    for k, v in ref["model"].items():
        assert torch.equal(final["model"][k], v), k
