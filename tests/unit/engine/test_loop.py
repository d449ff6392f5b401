import pytest
import torch
from torch import nn

from ltscale.data.sampling import EpochSampler
from ltscale.engine.backend import LocalBackend
from ltscale.engine.checkpoint import checkpoint_files, latest_checkpoint, load_checkpoint
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


def _toy_data(batch: int = 8, target=None):
    """64 regression samples in a DataLoader over the real EpochSampler. The loader has its own
    generator: iter(DataLoader) must not draw from the global RNG the model uses."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) if target is None else target(x)
    ds = torch.utils.data.TensorDataset(x, y, torch.arange(64))
    sampler = EpochSampler(64, batch_size=batch, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler,
                                         generator=torch.Generator().manual_seed(0))
    return loader, sampler


def _sgd(model, lr: float = 0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for g_ in opt.param_groups:
        g_["base_lr"] = lr
    return opt


def _run(tmp_path, epochs, fingerprint="a", seed=0):
    torch.manual_seed(seed)
    loader, sampler = _toy_data()
    model = Regress()
    opt = _sgd(model)
    state = fit(model, loader, sampler, opt, LoopConfig(epochs=epochs, progress=False, schedule="constant"),
                LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt",
                fingerprint=fingerprint)
    return model, state


def test_loss_decreases_and_checkpoint_is_written(tmp_path):
    model, state = _run(tmp_path, 3)
    losses = [h["epoch/loss"] for h in state.history]
    assert losses[-1] < 0.5 * losses[0]
    saved = load_checkpoint(latest_checkpoint(tmp_path / "ck.pt"))
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
    _run(tmp_path, 3, fingerprint="a")  # its newest checkpoint is at a later step than b's
    _, state = _run(tmp_path, 2, fingerprint="b")
    assert all(load_checkpoint(f)["fingerprint"] == "b" for f in checkpoint_files(tmp_path / "ck.pt"))
    _, state = _run(tmp_path, 2, fingerprint="b")  # a restart of b resumes b, finished
    assert len(state.history) == 2 and load_checkpoint(latest_checkpoint(tmp_path / "ck.pt"))["fingerprint"] == "b"


# --- mid-epoch checkpoints, exact resume, retention, NaN, accumulation ---------------------------
class Noisy(Regress):
    """Dropout makes the trajectory depend on the RNG stream: resume must restore it."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.calls, self.fail_at, self.losses = 0, fail_at, []

    def forward(self, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("killed")
        x, y = batch[0], batch[1]
        loss = ((self.lin(self.drop(x)).squeeze(1) - y) ** 2).mean()
        self.losses.append(float(loss.detach()))
        return {"loss": loss}


def _run_noisy(ck, epochs=2, fail_at=None, every=3, accumulate=1, batch=8, keep=2):
    torch.manual_seed(0)
    loader, sampler = _toy_data(batch)
    model = Noisy(fail_at)
    opt = _sgd(model)
    cfg = LoopConfig(epochs=epochs, progress=False, checkpoint_every=every, keep=keep,
                     accumulate=accumulate)
    state = fit(model, loader, sampler, opt, cfg, LocalBackend("cpu"), NullTracker(),
                checkpoint=ck, fingerprint="f")
    return model, state


def test_a_run_killed_mid_epoch_resumes_bit_exactly(tmp_path):
    straight, _ = _run_noisy(tmp_path / "a" / "ck.pt")
    try:
        _run_noisy(tmp_path / "b" / "ck.pt", fail_at=11)  # dies in epoch 2, after step 10
    except RuntimeError:
        pass
    saved = load_checkpoint(latest_checkpoint(tmp_path / "b" / "ck.pt"))
    assert (saved["epoch"], saved["step"], saved["epoch_step"]) == (1, 9, 1)  # mid-epoch
    resumed, state = _run_noisy(tmp_path / "b" / "ck.pt")
    assert resumed.losses == straight.losses[9:]  # every later step, bit for bit
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    assert state.step == 16


def test_keep_last_k_and_a_cut_short_newest_checkpoint(tmp_path):
    ck = tmp_path / "ck.pt"
    _run_noisy(ck, every=2, keep=3)
    files = checkpoint_files(ck)
    assert [int(f.stem.split("-")[1]) for f in files] == [16, 14, 12]
    files[0].write_bytes(files[0].read_bytes()[:100])  # a save killed half way
    _, state = _run_noisy(ck, epochs=2, every=2, keep=3)
    assert state.step == 16  # resumed from step 14 and finished the epoch again


def test_a_nan_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path):
    class Bad(Noisy):
        def forward(self, batch):
            out = super().forward(batch)
            return {"loss": out["loss"] * float("nan") if self.calls == 5 else out["loss"]}

    loader, sampler = _toy_data()
    model = Bad()
    opt = _sgd(model)
    with pytest.raises(FloatingPointError, match=r"step 5; .*ck-000000003\.pt"):
        fit(model, loader, sampler, opt, LoopConfig(epochs=1, progress=False, checkpoint_every=3),
            LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt")


def test_gradient_accumulation_matches_the_larger_batch():
    class Lin(Regress):  # no dropout: two micro-batches of 4 = one batch of 8
        pass

    results = []
    for batch, acc in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        loader, sampler = _toy_data(batch)
        model = Lin()
        opt = _sgd(model)
        state = fit(model, loader, sampler, opt,
                    LoopConfig(epochs=1, progress=False, accumulate=acc, schedule="constant"),
                    LocalBackend("cpu"), NullTracker())
        assert state.step == 8
        results.append(model.lin.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_each_step_uses_only_its_own_gradients():
    """The loop equals a hand-written SGD loop (zero_grad, backward, step), with and without
    accumulation: the previous step's gradients are dropped before each step's first backward
    (and not later: a micro-batch's gradients are not lost)."""
    def weights(acc):
        torch.manual_seed(0)
        loader, sampler = _toy_data(8 // acc)
        model = Regress()
        fit(model, loader, sampler, _sgd(model),
            LoopConfig(epochs=1, progress=False, accumulate=acc, schedule="constant"),
            LocalBackend("cpu"), NullTracker())
        return model.lin.weight.detach().clone()

    torch.manual_seed(0)
    loader, _ = _toy_data(8)
    ref = Regress()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for batch in loader:
        loss = ref(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for acc in (1, 2):
        torch.testing.assert_close(weights(acc), ref.lin.weight.detach(), rtol=1e-5, atol=1e-6)


def test_onecycle_loop_equals_a_plain_loop_with_torchs_one_cycle_lr():
    """The from-scratch default schedule: the engine's onecycle (lr and momentum cycle, Nesterov,
    decay on every parameter) trains exactly as a plain loop with torch's OneCycleLR."""
    from ltscale.config.base import OptimCfg
    from ltscale.engine.optim import build_optimizer

    epochs, cfg = 3, OptimCfg(lr=0.05, scale_lr=False, nesterov=True, weight_decay=1e-3,
                              decay_norm_bias=True, schedule="onecycle", warmup_fraction=0.5)
    torch.manual_seed(0)
    loader, sampler = _toy_data(8)
    model = Regress()
    fit(model, loader, sampler, build_optimizer([{"params": list(model.parameters())}], cfg, 8),
        LoopConfig(epochs=epochs, warmup_epochs=cfg.warmup_for(epochs), schedule="onecycle",
                   progress=False), LocalBackend("cpu"), NullTracker())

    torch.manual_seed(0)
    loader, sampler = _toy_data(8)
    ref = Regress()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * 8,
                                                pct_start=0.5)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = ref(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    torch.testing.assert_close(model.lin.weight.detach(), ref.lin.weight.detach(),
                               rtol=1e-5, atol=1e-6)


def test_online_probe_learns_without_changing_the_method_trajectory():
    from ltscale.methods import create_method
    from ltscale.methods.probe import OnlineProbe
    from ltscale.models import create_backbone

    g = torch.Generator().manual_seed(0)
    views = torch.rand(16, 2, 3, 16, 16, generator=g)
    labels = torch.arange(16) % 2
    labels[:4] = -1  # unlabelled samples are ignored by the probe
    views[labels == 1] += 3.0  # a class the probe can see
    batch = (views, labels, torch.arange(16))
    runs = []
    for probe in (False, True):
        torch.manual_seed(1)
        method = create_method("simsiam", create_backbone("resnet_tiny", in_chans=3),
                               proj_dim=16, pred_dim=8)
        model = OnlineProbe(method, 2) if probe else method
        opt = torch.optim.SGD([p for grp in model.param_groups() for p in grp["params"]], lr=0.05)
        for _ in range(40):
            out = model(batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        runs.append((method, out))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)  # the probe's extra eval-mode pass touches nothing of the method
    assert float(runs[1][1]["probe_acc"]) == 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_local_backend(tmp_path, precision):
    class Deep(Regress):
        def __init__(self):
            super().__init__()
            self.lin = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    torch.manual_seed(0)
    loader, sampler = _toy_data()
    model = Deep()
    opt = _sgd(model, lr=0.02)
    backend = LocalBackend("cpu", precision=precision)
    state = fit(model, loader, sampler, opt, LoopConfig(epochs=4, progress=False,
                                                          schedule="constant"),
                backend, NullTracker(), checkpoint=tmp_path / "ck.pt")
    losses = [h["epoch/loss"] for h in state.history]
    assert losses[-1] < 0.5 * losses[0]
    saved = load_checkpoint(latest_checkpoint(tmp_path / "ck.pt"))
    # the loss scaler's state travels with the checkpoint (enabled for fp16 only)
    assert bool(saved["backend"]["scaler"]) == (precision == "fp16")
