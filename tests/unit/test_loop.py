import torch
from torch import nn

from ltscale.data.sampling import EpochSampler
from ltscale.engine.backend import LocalBackend
from ltscale.engine.checkpoint import load_checkpoint
from ltscale.engine.loop import LoopConfig, fit
from ltscale.track import NullTracker


class Regress(nn.Module):
    views = 1

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        x, y = batch[0], batch[1]
        return {"loss": ((self.lin(x).squeeze(1) - y) ** 2).mean()}


def _run(tmp_path, epochs, fingerprint="a", seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    ds = torch.utils.data.TensorDataset(x, y, torch.arange(64))
    sampler = EpochSampler(64, batch_size=8, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler)
    model = Regress()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for g_ in opt.param_groups:
        g_["base_lr"] = 0.05
    state = fit(model, loader, sampler, opt, LoopConfig(epochs=epochs, progress=False, schedule="constant"),
                LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt",
                fingerprint=fingerprint, log=lambda *_: None)
    return model, state


def test_loss_decreases_and_checkpoint_is_written(tmp_path):
    model, state = _run(tmp_path, 3)
    losses = [h["epoch/loss"] for h in state.history]
    assert losses[-1] < 0.5 * losses[0]
    saved = load_checkpoint(tmp_path / "ck.pt")
    assert saved["epoch"] == 3 and saved["step"] == 24 and saved["fingerprint"] == "a"


def test_extending_a_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run(tmp_path / "a", 2)
    resumed, state = _run(tmp_path / "a", 4)
    straight, _ = _run(tmp_path / "b", 4)
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]
    # same seed, same order, constant lr (a cosine schedule depends on the total): equal parameters
    for p, q in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(p, q)


def test_checkpoint_of_another_experiment_is_not_resumed(tmp_path):
    _run(tmp_path, 2, fingerprint="a")
    _, state = _run(tmp_path, 2, fingerprint="b")
    assert len(state.history) == 2 and load_checkpoint(tmp_path / "ck.pt")["fingerprint"] == "b"
