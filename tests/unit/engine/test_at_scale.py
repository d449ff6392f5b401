"""The mechanisms behind the at-scale fixes, tested in one process: checkpoints read to CPU,
``keep_fp32`` under a low-precision cast, channels-last multi-view batches, the stop-request
agreement's cost, and checkpoint fingerprints that cover the trajectory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ltscale.config.loading import recipe_from_dict
from ltscale.data.sampling import EpochSampler
from ltscale.engine import backend as backend_module
from ltscale.engine import preempt
from ltscale.engine.backend import LocalBackend, channels_last
from ltscale.engine.loop import LoopConfig, fit
from ltscale.engine.precision import apply_fp32_policy, fp32_kept, kept_tensors
from ltscale.methods.ema import EMA
from ltscale.stages.context import make_context
from ltscale.stages.fingerprint import loop_fingerprint
from ltscale.track import NullTracker
from tests.conftest import tiny_pipeline_recipe


class Regress(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        return {"loss": ((self.lin(batch[0]).squeeze(1) - batch[1]) ** 2).mean()}


def _data(n=32, batch=4):
    x, y = torch.randn(n, 4), torch.randn(n)
    sampler = EpochSampler(n, batch_size=batch, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(n)),
                                         batch_size=batch, sampler=sampler)
    return loader, sampler


def _optimizer(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for g in opt.param_groups:
        g["base_lr"] = 0.01
    return opt


# --- checkpoints load to CPU ---------------------------------------------------------------------
def test_checkpoints_are_read_to_cpu_whatever_the_device(tmp_path, monkeypatch):
    """RNG states must come back as CPU byte tensors: reading a checkpoint with
    ``map_location=<cuda device>`` made ``torch.set_rng_state`` raise on every GPU resume."""
    loader, sampler = _data()
    model = Regress()
    fit(model, loader, sampler, _optimizer(model), LoopConfig(epochs=1, progress=False),
        LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt")
    seen = []
    real = backend_module.load_checkpoint
    monkeypatch.setattr(backend_module, "load_checkpoint",
                        lambda path, map_location="cpu": seen.append(map_location) or
                        real(path, map_location))
    backend = LocalBackend("cpu")
    backend.device = torch.device("meta")  # as if training on an accelerator
    saved = backend.load(next(tmp_path.glob("ck-*.pt")), Regress(), _optimizer(Regress()))
    assert seen == ["cpu"]
    assert saved["rng"][0]["torch"].device.type == "cpu"


# --- keep_fp32 -----------------------------------------------------------------------------------
class WithTarget(nn.Module):
    keep_fp32 = ("bank",)

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.target = EMA(self.encoder)
        self.register_buffer("bank", torch.randn(5, 4))


def test_a_low_precision_cast_keeps_declared_tensors_fp32():
    model = WithTarget()
    modules, buffers = fp32_kept(model)
    assert modules == ["target.target"] and buffers == ["bank"]
    for p in model.parameters():  # what DeepSpeed's bf16 does: parameters only
        p.data = p.data.bfloat16()
    model.bank.data = model.bank.data.bfloat16()
    optimized = {id(p) for p in model.encoder.parameters()}
    apply_fp32_policy(model, optimized)
    assert all(t.dtype == torch.float32 for t in kept_tensors(model).values()
               if t.is_floating_point())
    assert model.encoder[0].weight.dtype == torch.bfloat16  # the optimised part stays bf16
    bn = model.encoder[1]  # batch norm refuses bf16 weights with fp32 statistics
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.bfloat16
    # and the EMA update accumulates in fp32 from bf16 online weights
    before = copy.deepcopy(model.target.target.state_dict())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5)
    model.target.update(0.999, model.encoder)
    moved = [k for k, v in model.target.target.state_dict().items()
             if v.is_floating_point() and "running" not in k and not torch.equal(v, before[k])]
    assert len(moved) == 4  # conv weight and bias, BN weight and bias


def test_a_kept_module_that_is_optimised_is_refused():
    model = WithTarget()
    with pytest.raises(ValueError, match="keep_fp32"):
        apply_fp32_policy(model, {id(p) for p in model.parameters()})
    bad = WithTarget()
    bad.keep_fp32 = ("nothing",)
    with pytest.raises(AttributeError, match="nothing"):
        fp32_kept(bad)


# --- channels-last --------------------------------------------------------------------------------
def test_multi_view_batches_become_channels_last_per_view():
    x = torch.randn(4, 2, 3, 8, 8)
    y = channels_last(x)
    assert torch.equal(x, y)
    for v in range(2):  # each view has channels innermost
        view = y[:, v]
        assert view.stride(1) == 1 and view.stride(3) == 3
    flat = y.flatten(0, 1)  # the (B·V)×C×H×W batch of SimSiam-style methods, without a copy
    assert flat.is_contiguous(memory_format=torch.channels_last)
    assert flat.data_ptr() == y.data_ptr()
    assert channels_last(torch.randn(4, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    labels = torch.arange(4)
    assert channels_last(labels) is labels


# --- the stop-request agreement --------------------------------------------------------------------
class TwoRanks(LocalBackend):
    """A one-process stand-in for two ranks that counts the collectives the loop makes."""

    world_size = 2

    def __init__(self):
        super().__init__("cpu")
        self.flags, self.objects = 0, 0

    def any_rank(self, flag):
        self.flags += 1
        return bool(flag)

    def all_gather_object(self, obj):
        self.objects += 1
        return [obj, obj]


def test_the_stop_agreement_costs_one_flag_reduce_every_n_steps(monkeypatch):
    monkeypatch.setattr(preempt, "watching", lambda: True)
    loader, sampler = _data(n=64, batch=2)  # 32 steps per epoch at "world size 2"
    backend = TwoRanks()
    model = Regress()
    fit(model, loader, sampler, _optimizer(model),
        LoopConfig(epochs=1, progress=False, stop_check_every=10), backend, NullTracker())
    assert backend.flags == 4  # before steps 1, 11, 21, 31: not one object gather per step
    assert backend.objects <= 2  # the epoch end's skipped-sample count only


# --- fingerprints ---------------------------------------------------------------------------------
def _print(tiny_idx, tmp_path, **changes):
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    for key, value in changes.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value
    ctx = make_context(recipe_from_dict(raw), NullTracker(), progress=False)
    stage = ctx.recipe.pretrain.resolved_stages()[0]
    return loop_fingerprint(ctx, ctx.recipe.pretrain.model_dump(exclude={"stages", "method"})
                        | stage.model_dump())


def test_the_fingerprint_covers_what_changes_the_trajectory(tiny_idx, tmp_path):
    base = _print(tiny_idx, tmp_path)
    # the cosine schedule spans every epoch; precision and clipping change every step
    for changes in ({"pretrain__epochs": 3}, {"engine__precision": "bf16"},
                    {"engine__sync_bn": True}):
        assert _print(tiny_idx, tmp_path, **changes) != base, changes
    # how ranks talk, memory layout and loader workers do not
    for changes in ({"engine__channels_last": True}, {"engine__timeout_s": 5},
                    {"pretrain__workers": 3}, {"pretrain__checkpoint_every": 7}):
        assert _print(tiny_idx, tmp_path, **changes) == base, changes
