import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import lambertw as scipy_lambertw

from ltscale.config.supervised import LossCfg
from ltscale.core.errors import RecipeError
from ltscale.losses import classification_loss, loss_defaults, loss_names
from ltscale.losses.base import ClassificationLoss
from ltscale.losses.classification import (
    RunningMean,
    balanced_softmax_loss,
    class_balanced_weights,
    focal_loss,
    la_superloss,
    ldam_loss,
    ldam_margins,
    logit_adjusted_loss,
    posthoc_logit_adjustment,
    superloss,
    superloss_confidence,
    weighted_cross_entropy,
)
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


# --- references written with numpy and explicit loops ---

def _np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def _np_ce(z, y):
    ls = _np_log_softmax(z)
    return np.array([-ls[i, t] for i, t in enumerate(y)])


def _data(b=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, c, (b,), generator=g)
    return logits, targets


def test_superloss_closed_form_against_scipy_over_a_wide_beta_range_including_the_clamp():
    # β = (ℓ − τ)/λ from far below −2/e (clamped: σ* = e) to large positive values
    tau, lam = math.log(10), 4.0
    beta = np.concatenate([np.linspace(-10, -2 / math.e, 50), np.linspace(-2 / math.e, 0, 200),
                           np.linspace(0, 20, 200), np.logspace(1.5, 6, 30)])
    loss = torch.tensor(tau + lam * beta, dtype=torch.float64)
    # at the clamp W0(−1/e) = −1, i.e. σ* = e (scipy returns nan at the float −1/e, which lies a
    # hair below the true branch point, so the reference takes the value there by hand)
    x = 0.5 * np.maximum(-2 / math.e, beta)
    at_clamp = x <= -1 / math.e
    ref_sigma = np.where(at_clamp, math.e,
                         np.exp(-scipy_lambertw(np.where(at_clamp, 0.0, x)).real))
    assert np.isfinite(ref_sigma).all()
    sigma = superloss_confidence(loss, tau, lam).numpy()
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-6, atol=1e-6)
    assert np.all(sigma[beta <= -2 / math.e] == pytest.approx(math.e, abs=1e-6))
    ref_sl = (loss.numpy() - tau) * ref_sigma + lam * np.log(ref_sigma) ** 2
    np.testing.assert_allclose(superloss(loss, tau, lam).numpy(), ref_sl, rtol=1e-6, atol=1e-6)
    # also in float32, as in training
    np.testing.assert_allclose(superloss_confidence(loss.float(), tau, lam).numpy(), ref_sigma,
                               rtol=1e-5, atol=1e-5)


def test_focal_loss_reduces_to_ce_at_gamma_0_and_matches_a_reference():
    logits, targets = _data()
    torch.testing.assert_close(focal_loss(logits, targets, gamma=0.0),
                               F.cross_entropy(logits, targets, reduction="none"))
    z, y = logits.numpy(), targets.numpy()
    alpha = np.array([0.5, 1.0, 1.5, 2.0, 0.25])
    for gamma in (0.5, 1.0, 2.0):
        ref = []
        for i in range(len(y)):
            p = np.exp(z[i] - z[i].max()) / np.exp(z[i] - z[i].max()).sum()
            ref.append(-alpha[y[i]] * (1 - p[y[i]]) ** gamma * np.log(p[y[i]]))
        ours = focal_loss(logits, targets, gamma, weight=torch.tensor(alpha))
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    # a hand value: two classes, logits (0, 0), p_t = 1/2, γ = 2 → ¼·log 2
    hand = focal_loss(torch.zeros(1, 2), torch.tensor([1]), gamma=2.0)
    assert hand.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    # a confident sample (p_t rounds to 1) keeps a finite gradient for γ < 1
    z1 = torch.tensor([[60.0, 0.0]], requires_grad=True)
    focal_loss(z1, torch.tensor([0]), gamma=0.5).sum().backward()
    assert torch.isfinite(z1.grad).all()


def test_class_balanced_weights_by_hand():
    beta = 0.9
    counts = [100, 10, 1]
    eff = [(1 - beta ** n) / (1 - beta) for n in counts]   # 9.99997…, 6.5132…, 1
    raw = [1 / e for e in eff]
    ref = [3 * r / sum(raw) for r in raw]
    w = class_balanced_weights(counts, beta)
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6)
    assert w.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert w[0] < w[1] < w[2]
    # default β = 0.9999
    eff = [(1 - 0.9999 ** n) / (1 - 0.9999) for n in counts]
    raw = [1 / e for e in eff]
    np.testing.assert_allclose(class_balanced_weights(counts).numpy(),
                               [3 * r / sum(raw) for r in raw], rtol=1e-5)
    # β = 0: no re-weighting; β = 1: inverse frequency
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0).numpy(), [1, 1, 1])
    inv = np.array([1 / 100, 1 / 10, 1.0])
    np.testing.assert_allclose(class_balanced_weights(counts, 1.0).numpy(), 3 * inv / inv.sum(),
                               rtol=1e-6)
    # an empty class gets weight 0; the others still sum to C
    w = class_balanced_weights([50, 0, 5, 1], 0.99)
    assert w[1] == 0 and torch.isfinite(w).all() and w.sum().item() == pytest.approx(4.0, rel=1e-6)


def test_weighted_cross_entropy_scales_each_sample_by_its_class_weight():
    logits, targets = _data()
    w = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    ref = _np_ce(logits.numpy(), targets.numpy()) * w.numpy()[targets.numpy()]
    np.testing.assert_allclose(weighted_cross_entropy(logits, targets, w).numpy(), ref, rtol=1e-10)


def test_ldam_margins_are_proportional_to_n_to_the_minus_quarter():
    counts = [5000, 500, 50, 5]
    m = ldam_margins(counts, max_margin=0.5).numpy()
    assert m.max() == pytest.approx(0.5) and m.argmax() == 3
    ref = np.array(counts, dtype=float) ** -0.25
    np.testing.assert_allclose(m, 0.5 * ref / ref.max(), rtol=1e-6)
    np.testing.assert_allclose(m[:-1] / m[1:], 10 ** -0.25, rtol=1e-6)
    # an empty class takes max_margin and does not change the scaling of the others
    m0 = ldam_margins([5000, 0, 500, 50, 5], max_margin=0.3).numpy()
    np.testing.assert_allclose(m0[[0, 2, 3, 4]], 0.3 * ref / ref.max(), rtol=1e-6)
    assert m0[1] == pytest.approx(0.3)


def test_ldam_loss_subtracts_the_margin_from_the_target_logit_then_scales():
    g = torch.Generator().manual_seed(1)
    cosine = torch.rand(10, 4, generator=g, dtype=torch.float64) * 2 - 1
    targets = torch.randint(0, 4, (10,), generator=g)
    margins = ldam_margins([400, 100, 25, 4], 0.5).double()
    w = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    ref, ref_w = [], []
    for i in range(10):
        z = cosine[i].numpy().copy()
        z[targets[i]] -= margins[targets[i]].item()
        z = 30.0 * z
        lse = z.max() + np.log(np.exp(z - z.max()).sum())
        ref.append(lse - z[targets[i]])
        ref_w.append(ref[-1] * w[targets[i]].item())
    np.testing.assert_allclose(ldam_loss(cosine, targets, margins).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(ldam_loss(cosine, targets, margins, weight=w).numpy(), ref_w,
                               rtol=1e-10)
    # zero margins and scale 1 is plain CE
    torch.testing.assert_close(ldam_loss(cosine, targets, torch.zeros(4), scale=1.0),
                               F.cross_entropy(cosine, targets, reduction="none"))


def test_balanced_softmax_equals_logit_adjustment_with_tau_1():
    logits, targets = _data(c=4)
    counts = torch.tensor([600.0, 250.0, 40.0, 3.0])
    ref = _np_ce(logits.numpy() + np.log(counts.double().numpy())[None], targets.numpy())
    np.testing.assert_allclose(balanced_softmax_loss(logits, targets, counts).numpy(), ref,
                               rtol=1e-10)
    log_prior = (counts.double() / counts.sum()).log()
    torch.testing.assert_close(balanced_softmax_loss(logits, targets, counts),
                               logit_adjusted_loss(logits, targets, log_prior, tau=1.0))


def test_posthoc_logit_adjustment():
    logits, _ = _data(c=3)
    prior = torch.tensor([0.7, 0.25, 0.05], dtype=torch.float64)
    out = posthoc_logit_adjustment(logits, prior.log(), tau=0.5)
    for i in range(len(logits)):
        for c in range(3):
            assert out[i, c].item() == pytest.approx(logits[i, c].item() - 0.5 * math.log(prior[c]))
    # with equal raw logits the rarest class wins
    assert posthoc_logit_adjustment(torch.zeros(1, 3), prior.log()).argmax().item() == 2


def test_running_mean():
    rm = RunningMean(momentum=0.9)
    assert rm.value is None
    values = [2.0, 4.0, 1.0, 3.0]
    ref = None
    for v in values:
        ref = v if ref is None else 0.9 * ref + 0.1 * v
        rm.update(torch.tensor(v))
        assert rm.value == pytest.approx(ref)
    with pytest.raises(ValueError):
        RunningMean(momentum=1.0)


# --- the registry ---

COUNTS = [500, 200, 80, 30, 10, 0]


def test_every_registered_loss_gives_finite_per_sample_losses():
    assert set(loss_names()) == {"ce", "la", "sl", "la_sl", "balanced_softmax", "focal", "cb",
                                 "cb_focal", "drw", "ldam", "ldam_drw"}
    logits = torch.randn(16, 6, requires_grad=True)
    targets = torch.randint(0, 5, (16,))  # the empty class never occurs as a target
    for name in loss_names():
        fn = classification_loss(name, COUNTS)
        assert isinstance(fn, ClassificationLoss) and isinstance(fn, torch.nn.Module)
        for epoch in (0, 9):
            fn.set_epoch(epoch, 10)
            out = fn(logits, targets)
            assert out.shape == (16,) and torch.isfinite(out).all(), name
            grad, = torch.autograd.grad(out.mean(), logits)
            assert torch.isfinite(grad).all(), name
        assert (fn.confidence is not None) == (name in ("sl", "la_sl")), name
        if fn.confidence is not None:
            assert fn.confidence.shape == (16,) and not fn.confidence.requires_grad


def test_registry_losses_match_the_pure_functions():
    logits, targets = _data(b=20, c=6)
    targets = targets.clamp_max(4)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    clamped = counts.clamp_min(1)
    log_prior = (clamped / clamped.sum()).log()
    ce = F.cross_entropy(logits, targets, reduction="none")
    cb = class_balanced_weights(COUNTS, 0.999)
    la = logit_adjusted_loss(logits, targets, log_prior, 0.5)
    expected = {
        ("ce", ()): ce,
        ("la", (("tau", 0.5),)): la,
        ("sl", (("lam", 2.0),)): superloss(ce, math.log(6), 2.0),
        ("sl", (("tau_sl", 1.5),)): superloss(ce, 1.5, 4.0),
        ("la_sl", (("tau", 0.5),)): superloss(la, math.log(6), 4.0),
        ("balanced_softmax", ()): logit_adjusted_loss(logits, targets, log_prior, 1.0),
        ("focal", (("gamma", 2.0),)): focal_loss(logits, targets, 2.0),
        ("cb", (("beta", 0.999),)): weighted_cross_entropy(logits, targets, cb),
        ("cb_focal", (("beta", 0.999), ("gamma", 0.5))): focal_loss(logits, targets, 0.5, cb),
        ("ldam", (("scale", 10.0),)): ldam_loss(logits, targets, ldam_margins(COUNTS), 10.0),
    }
    for (name, opts), ref in expected.items():
        torch.testing.assert_close(classification_loss(name, COUNTS, **dict(opts))(logits, targets),
                                   ref, rtol=1e-5, atol=1e-6, msg=name)


def test_default_options_follow_seed_000():
    assert loss_defaults("la_sl") == {"tau": 1.0, "lam": 4.0, "tau_sl": None}
    logits, targets = _data(c=6)
    ref = la_superloss(logits, targets, classification_loss("ce", COUNTS).log_prior.double())
    torch.testing.assert_close(classification_loss("la_sl", COUNTS)(logits, targets), ref)


def test_drw_switches_class_balanced_weights_on_at_drw_start():
    logits, targets = _data(b=20, c=6)
    targets = targets.clamp_max(4)
    ce = F.cross_entropy(logits, targets, reduction="none")
    cb = class_balanced_weights(COUNTS, 0.9999).double()
    drw = classification_loss("drw", COUNTS)
    assert drw.drw_epoch(200) == 160 and drw.drw_epoch(10) == 8
    for epoch in range(10):
        drw.set_epoch(epoch, 10)
        if epoch < 8:
            assert drw.class_weights is None
            torch.testing.assert_close(drw(logits, targets), ce)
        else:
            torch.testing.assert_close(drw.class_weights, cb.float())
            # reduction weight_sum (the default): per-sample w_y·ℓ·B / Σ w_y
            torch.testing.assert_close(drw(logits, targets),
                                       ce * cb[targets] * 20 / cb[targets].sum())
    ldam = classification_loss("ldam_drw", COUNTS, drw_start=0.5, drw_beta=0.99, reduction="mean")
    m = ldam_margins(COUNTS)
    ldam.set_epoch(4, 10)
    torch.testing.assert_close(ldam(logits, targets), ldam_loss(logits, targets, m))
    ldam.set_epoch(5, 10)
    torch.testing.assert_close(ldam(logits, targets),
                               ldam_loss(logits, targets, m, weight=class_balanced_weights(COUNTS, 0.99)))
    # cb is weighted from the start and set_epoch does not change that
    cbl = classification_loss("cb", COUNTS)
    cbl.set_epoch(0, 10)
    torch.testing.assert_close(cbl(logits, targets), ce * cb[targets])


def test_class_weighted_reductions_match_their_reference_formulas():
    logits, targets = _data(b=20, c=6)
    targets = targets.clamp_max(4)
    w = class_balanced_weights(COUNTS, 0.999).double()
    wy = w[targets]
    ce = F.cross_entropy(logits, targets, reduction="none")
    m = ldam_margins(COUNTS, 0.5).double()
    adjusted = 30.0 * (logits - F.one_hot(targets, 6).double() * m[targets, None])
    p_t = F.softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
    focal = -(1 - p_t) ** 2 * p_t.log()
    refs = {  # loss → (per-sample weighted loss, reference of reduction weight_sum)
        "cb": (wy * ce, F.cross_entropy(logits, targets, weight=w)),
        "drw": (wy * ce, F.cross_entropy(logits, targets, weight=w)),
        "ldam_drw": (wy * F.cross_entropy(adjusted, targets, reduction="none"),
                     F.cross_entropy(adjusted, targets, weight=w)),
        "cb_focal": (wy * focal, (wy * focal).sum() / wy.sum()),
    }
    beta = {"cb": "beta", "cb_focal": "beta", "drw": "drw_beta", "ldam_drw": "drw_beta"}
    for name, (weighted, weight_sum) in refs.items():
        extra = {"gamma": 2.0} if name == "cb_focal" else {}
        for reduction in ("mean", "weight_sum"):
            fn = classification_loss(name, COUNTS, reduction=reduction, **{beta[name]: 0.999},
                                     **extra)
            fn.set_epoch(9, 10)
            batch = fn(logits, targets).mean()  # what the trainers take (train_head, Supervised)
            ref = weighted.mean() if reduction == "mean" else weight_sum
            torch.testing.assert_close(batch, ref, msg=f"{name} {reduction}")
    # the papers' reductions are the defaults; before DRW switches on both are the plain mean
    assert {n: classification_loss(n, COUNTS).reduction for n in refs} == {
        "cb": "mean", "cb_focal": "mean", "drw": "weight_sum", "ldam_drw": "weight_sum"}
    drw = classification_loss("drw", COUNTS)
    drw.set_epoch(0, 10)
    torch.testing.assert_close(drw(logits, targets), ce)
    with pytest.raises(RecipeError, match="reduction"):
        classification_loss("drw", COUNTS, reduction="sum")
    with pytest.raises(RecipeError, match="'ldam' does not take.*reduction"):
        classification_loss("ldam", COUNTS, reduction="mean")


def test_superloss_running_mean_threshold():
    logits, targets = _data(c=6)
    fn = classification_loss("sl", COUNTS, tau_sl="mean")
    tau = None
    for scale in (1.0, 3.0, 0.5):
        ce = F.cross_entropy(logits * scale, targets, reduction="none")
        tau = ce.mean().item() if tau is None else 0.9 * tau + 0.1 * ce.mean().item()
        out = fn(logits * scale, targets)
        assert fn.running_tau.value == pytest.approx(tau, rel=1e-10)
        torch.testing.assert_close(out, superloss(ce, tau, 4.0))
        torch.testing.assert_close(fn.confidence, superloss_confidence(ce, tau, 4.0))
    # in eval mode the threshold is frozen
    fn.eval()
    fn(logits * 5, targets)
    assert fn.running_tau.value == pytest.approx(tau, rel=1e-10)


def test_superloss_running_mean_follows_the_ema_of_batch_means():
    fn = classification_loss("sl", [10, 10, 10], tau_sl="mean")
    g = torch.Generator().manual_seed(3)
    ref = None
    for _ in range(5):
        logits = torch.randn(8, 3, generator=g) * 3
        targets = torch.randint(0, 3, (8,), generator=g)
        m = F.cross_entropy(logits, targets).item()
        ref = m if ref is None else 0.9 * ref + 0.1 * m
        fn(logits, targets)
        assert fn.running_tau.value == pytest.approx(ref, rel=1e-6)


def test_unknown_names_and_options_raise_recipe_errors():
    with pytest.raises(RecipeError, match="'nope'.*ce.*ldam_drw"):
        classification_loss("nope", COUNTS)
    with pytest.raises(RecipeError, match="'focal'.*'?beta'?.*gamma"):
        classification_loss("focal", COUNTS, beta=0.9)
    with pytest.raises(RecipeError, match="'ce'.*tau.*no options"):
        classification_loss("ce", COUNTS, tau=1.0)
    with pytest.raises(RecipeError, match="tau_sl"):
        classification_loss("sl", COUNTS, tau_sl="median")
    with pytest.raises(RecipeError, match="beta"):
        classification_loss("cb", COUNTS, beta=1.5)
    with pytest.raises(RecipeError, match="lam"):
        classification_loss("la_sl", COUNTS, lam=0)


def test_to_moves_buffers_and_they_stay_out_of_the_state_dict():
    fn = classification_loss("ldam_drw", COUNTS)
    fn = fn.to(torch.float64)
    for name in ("counts", "log_prior", "class_balanced", "margins"):
        assert getattr(fn, name).dtype == torch.float64, name
    assert fn.state_dict() == {}
    if torch.cuda.is_available():
        fn = fn.to("cuda")
        assert fn.log_prior.is_cuda and fn.margins.is_cuda
        assert fn(torch.randn(4, 6, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda")).is_cuda
    meta = classification_loss("la", COUNTS).to("meta")
    assert meta.log_prior.is_meta and meta.counts.is_meta


def test_config_names_and_options_match_the_registry():
    from typing import get_args
    assert set(get_args(LossCfg.model_fields["name"].annotation)) == set(loss_names())
    for name in loss_names():
        cfg = LossCfg(name=name)
        assert cfg.options() == loss_defaults(name), name
        classification_loss(name, COUNTS, **cfg.options())
    assert LossCfg(name="sl", tau_sl="mean").options()["tau_sl"] == "mean"
