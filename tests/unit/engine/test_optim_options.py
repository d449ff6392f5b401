"""The optimizer options a strong supervised recipe needs: Nesterov momentum, weight decay on
norms and biases, the one-cycle schedule with its momentum cycle (against torch's own
OneCycleLR), padded-crop width."""

import math

import pytest
import torch
from torch import nn

from ltscale.config.base import AugmentCfg, OptimCfg
from ltscale.data.augment import make_preset
from ltscale.engine.optim import build_optimizer, lr_factor, momentum_offset, set_momentum


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def test_nesterov_reaches_sgd():
    net = _net()
    net(torch.zeros(2, 1, 5, 5))
    opt = build_optimizer([{"params": list(net.parameters())}], OptimCfg(nesterov=True), 256)
    assert all(g["nesterov"] for g in opt.param_groups)
    opt = build_optimizer([{"params": list(net.parameters())}], OptimCfg(), 256)
    assert not any(g["nesterov"] for g in opt.param_groups)


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_on_norms_and_biases_only_when_asked(decay_all):
    net = _net()
    net(torch.zeros(2, 1, 5, 5))
    cfg = OptimCfg(weight_decay=5e-4, decay_norm_bias=decay_all)
    opt = build_optimizer([{"params": list(net.parameters())}], cfg, 256)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    one_d = [p for p in net.parameters() if p.ndim == 1]
    assert all((id(p) in decayed) == decay_all for p in one_d)
    assert all(id(p) in decayed for p in net.parameters() if p.ndim > 1)


@pytest.mark.parametrize("total,warmup", [(100, 30), (585, 175), (40, 4)])
def test_onecycle_is_torchs_one_cycle_lr(total, warmup):
    """The engine's onecycle factor times the peak is torch's OneCycleLR (cos annealing,
    div_factor 25, final_div_factor 1e4) at a whole number of warm-up steps."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total,
                                                pct_start=warmup / total)
    ours = build_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}],
                           OptimCfg(lr=0.1, scale_lr=False, momentum=0.9), 256)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(
            0.1 * lr_factor(step, total, warmup, "onecycle"), rel=1e-9, abs=1e-12)
        set_momentum(ours, momentum_offset(step, total, warmup, "onecycle"))
        assert ours.param_groups[0]["momentum"] == pytest.approx(
            opt.param_groups[0]["momentum"], rel=1e-9)  # cycled 0.95 → 0.85 → 0.95
        opt.step()
        sched.step()


def test_cosine_schedule_unchanged():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(
        math.pi * 89 / 90)))


def test_padding_option_reaches_every_padded_view():
    preset = make_preset("supervised_cifar", 28, 1, **AugmentCfg(preset="supervised_cifar",
                                                                 padding=2).options())
    assert [v.padding for v in preset.views] == [2]
    assert make_preset("supervised_cifar", 28, 1).views[0].padding == 4
