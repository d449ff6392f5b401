import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import lambertw as scipy_lambertw

from ltscale.losses.classification import (la_superloss, logit_adjusted_loss, superloss,
                                           superloss_confidence)
from ltscale.losses.lambertw import lambertw
from ltscale.losses.ssl import simsiam_loss


def test_lambertw_matches_scipy_on_the_principal_branch():
    x = np.concatenate([np.linspace(-1 / math.e + 1e-12, 0, 500), np.linspace(0, 50, 500),
                        np.logspace(2, 9, 40)])
    ours = lambertw(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, scipy_lambertw(x).real, rtol=1e-10, atol=1e-10)
    assert lambertw(torch.tensor([-1 / math.e])).item() == pytest.approx(-1.0, abs=1e-6)


def test_superloss_confidence_is_the_closed_form_optimum():
    loss = torch.tensor([0.1, 1.0, math.log(10), 5.0, 20.0], dtype=torch.float64)
    tau, lam = math.log(10), 4.0
    sigma = superloss_confidence(loss, tau, lam)
    beta = ((loss - tau) / lam).numpy()
    ref = np.exp(-scipy_lambertw(0.5 * np.maximum(-2 / math.e, beta)).real)
    np.testing.assert_allclose(sigma.numpy(), ref, rtol=1e-10)
    # σ* is the minimiser of (ℓ − τ)σ + λ(log σ)² on (0, e] (the expression is unbounded below
    # for large σ when ℓ < τ; the stationary point lies below e): check against a dense grid
    grid = torch.logspace(-4, math.log10(math.e), 20001, dtype=torch.float64)
    for l, s in zip(loss, sigma):
        values = (l - tau) * grid + lam * torch.log(grid) ** 2
        assert abs(grid[values.argmin()] - s) / s < 2e-3
    assert sigma[2] == pytest.approx(1.0)  # a loss equal to τ gets confidence 1
    assert sigma[0] > 1 > sigma[4]         # easy samples up-weighted, hard ones down-weighted


def test_superloss_gradient_is_confidence_times_loss_gradient():
    loss = torch.tensor([0.5, 2.3, 8.0], requires_grad=True)
    superloss(loss, 2.3, 4.0).sum().backward()
    torch.testing.assert_close(loss.grad, superloss_confidence(loss, 2.3, 4.0))


def test_logit_adjustment_is_ce_on_shifted_logits():
    logits = torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    prior = torch.tensor([0.7, 0.2, 0.08, 0.02])
    ours = logit_adjusted_loss(logits, targets, prior.log(), tau=1.5)
    ref = -F.log_softmax(logits + 1.5 * prior.log(), 1)[torch.arange(6), targets]
    torch.testing.assert_close(ours, ref)


def test_la_superloss_composes_the_two():
    logits = torch.randn(8, 10)
    targets = torch.arange(8)
    prior = torch.full((10,), 0.1).log()
    la = logit_adjusted_loss(logits, targets, prior)
    torch.testing.assert_close(la_superloss(logits, targets, prior, lam=4.0),
                               superloss(la, math.log(10), 4.0))


def test_simsiam_loss_bounds_and_stop_gradient():
    z = torch.randn(16, 8, requires_grad=True)
    assert simsiam_loss(z, z, z, z).item() == pytest.approx(-1.0)
    p = torch.randn(16, 8, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad is not None
