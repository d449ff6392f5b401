import torch
from torch import nn

from ltscale.config.base import OptimCfg
from ltscale.engine.optim import LARS, build_optimizer, lr_factor


def test_lars_step_matches_a_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))          # ‖w‖ = 5
    w.grad = torch.tensor([0.6, 0.8])                    # ‖g‖ = 1
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.0, eta=0.02)
    opt.step()
    # update = η‖w‖/‖g‖ · g = 0.1 · g; w ← w − lr · update
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 0.1 * torch.tensor([0.6, 0.8]))
    w.grad = torch.tensor([0.6, 0.8])
    before = w.detach().clone()
    opt.step()  # momentum: buffer = 0.9 · old + new
    trust = 0.02 * torch.linalg.vector_norm(before) / 1.0
    expected = before - 0.1 * (0.9 * 0.1 * torch.tensor([0.6, 0.8]) + trust * torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(w.detach(), expected)


def test_lars_leaves_norms_and_biases_unadapted_and_undecayed():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = build_optimizer([{"params": list(model.parameters())}],
                          OptimCfg(name="lars", lr=0.1, weight_decay=1e-4), batch_size=256)
    assert isinstance(opt, LARS)
    flags = {(g["weight_decay"], g["lars_exclude"]) for g in opt.param_groups}
    assert flags == {(1e-4, False), (0.0, True)}
    bias = model[0].bias
    bias.grad = torch.ones_like(bias)
    for p in model.parameters():
        if p is not bias:
            p.grad = torch.zeros_like(p)
    before = bias.detach().clone()
    opt.step()
    torch.testing.assert_close(bias.detach(), before - 0.1)  # plain SGD step on the bias


def test_bias_lr_sets_the_lr_of_biases_and_norms_scaled_like_lr():
    # Barlow Twins: lr 0.2 for weights, 0.0048 for biases and BN, both × B/256
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = build_optimizer([{"params": list(model.parameters())}],
                          OptimCfg(name="lars", lr=0.2, bias_lr=0.0048), batch_size=512)
    lrs = {g["weight_decay"] > 0: (g["base_lr"], g["lr"]) for g in opt.param_groups}
    assert lrs == {True: (0.4, 0.4), False: (0.0096, 0.0096)}


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == 0.1
    assert lr_factor(9, 100, 10, "cosine") == 1.0
    assert abs(lr_factor(55, 100, 10, "cosine") - 0.5) < 1e-9
    assert lr_factor(100, 100, 10, "cosine") == 0.0
