"""SupCon, KCL and SBCL's bi-granularity loss against slow per-anchor references, KCL's positive
sampling, and the supcon/kcl methods on a fixed batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltscale.losses.supcon import kcl_loss, kcl_positives, sbcl_loss, supcon_loss
from ltscale.methods import create_method
from ltscale.models import create_backbone


def _views(z1, z2):
    """All 2N views as (unit vector, image index, view index), in the [view 1; view 2] order."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    return [(z1[i], i, 0) for i in range(n)] + [(z2[i], i, 1) for i in range(n)]


def _log_ratio(a, p, others, tau):
    """log exp(a·p/τ) / Σ_o exp(a·o/τ)."""
    den = sum(math.exp(float(a @ o) / tau) for o in others)
    return float(a @ p) / tau - math.log(den)


def _reference_supcon(z1, z2, y, tau, positive_sets=None):
    views = _views(z1, z2)
    total = 0.0
    for a, (za, ia, va) in enumerate(views):
        others = [zo for o, (zo, _, _) in enumerate(views) if o != a]
        if positive_sets is None:
            pos = [o for o, (_, io, _) in enumerate(views) if o != a and y[io] == y[ia]]
        else:
            pos = positive_sets[a]
        total += -sum(_log_ratio(za, views[p][0], others, tau) for p in pos) / len(pos)
    return total / len(views)


def _reference_sbcl(z1, z2, y, sub, tau1, tau2, beta):
    views = _views(z1, z2)
    total = 0.0
    for a, (za, ia, _) in enumerate(views):
        rest = [o for o in range(len(views)) if o != a]
        same_sub = [o for o in rest if sub[views[o][1]] == sub[ia]]
        fine = -sum(_log_ratio(za, views[p][0], [views[o][0] for o in rest], tau1)
                    for p in same_sub) / len(same_sub)
        coarse_den = [views[o][0] for o in rest if o not in same_sub]
        coarse_pos = [o for o in rest if o not in same_sub and y[views[o][1]] == y[ia]]
        coarse = 0.0
        if coarse_pos:
            t = float(tau2[y[ia]])
            coarse = -sum(_log_ratio(za, views[p][0], coarse_den, t)
                          for p in coarse_pos) / len(coarse_pos)
        total += fine + beta * coarse
    return total / len(views)


def _data(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


def test_supcon_matches_the_per_anchor_reference():
    z1, z2 = _data()
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    got = supcon_loss(z1, z2, y, temperature=0.3).item()
    assert got == pytest.approx(_reference_supcon(z1, z2, y.tolist(), 0.3), rel=1e-10)
    # with one label per image it is SimCLR's NT-Xent
    from ltscale.losses.ssl import nt_xent
    distinct = torch.arange(6)
    assert supcon_loss(z1, z2, distinct, 0.3).item() == pytest.approx(
        nt_xent(z1, z2, 0.3).item(), rel=1e-10)


def test_supcon_rank_slices_average_to_the_global_loss():
    z1, z2 = _data(n=8)
    y = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0])
    full = supcon_loss(z1, z2, y, 0.2).item()
    halves = [supcon_loss(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4],
                          0.2, z1, z2, y, offset=r * 4).item() for r in range(2)]
    assert sum(halves) / 2 == pytest.approx(full, rel=1e-10)


def test_kcl_positives_are_the_other_view_plus_k_same_label_views():
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    n = y.numel()
    ya = torch.cat([y, y])
    self_col = torch.cat([torch.arange(n), torch.arange(n) + n])
    pair_col = torch.cat([torch.arange(n) + n, torch.arange(n)])
    for k in (1, 3, 20):
        mask = kcl_positives(ya, ya, self_col, pair_col, k, torch.Generator().manual_seed(k))
        for a in range(2 * n):
            cols = mask[a].nonzero().squeeze(1).tolist()
            available = int((ya == ya[a]).sum()) - 2  # minus itself and its other view
            assert len(cols) == 1 + min(k, available)
            assert int(self_col[a]) not in cols and int(pair_col[a]) in cols
            assert all(ya[c] == ya[a] for c in cols)
    # the draw varies with the generator (k = 2 of 8 candidates for the class-0 anchors)
    masks = {kcl_positives(ya, ya, self_col, pair_col, 2,
                           torch.Generator().manual_seed(s)).numpy().tobytes() for s in range(6)}
    assert len(masks) > 1


def test_kcl_matches_the_reference_on_its_drawn_positives():
    z1, z2 = _data(n=7)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    k = 2
    got = kcl_loss(z1, z2, y, k, 0.25, generator=torch.Generator().manual_seed(5)).item()
    n = 7
    ya = torch.cat([y, y])
    mask = kcl_positives(ya, ya, torch.cat([torch.arange(n), torch.arange(n) + n]),
                         torch.cat([torch.arange(n) + n, torch.arange(n)]), k,
                         torch.Generator().manual_seed(5))
    sets = [mask[a].nonzero().squeeze(1).tolist() for a in range(2 * n)]
    assert got == pytest.approx(_reference_supcon(z1, z2, y.tolist(), 0.25, sets), rel=1e-10)
    # with k at least the class size, KCL is SupCon
    assert kcl_loss(z1, z2, y, 10, 0.25).item() == pytest.approx(
        supcon_loss(z1, z2, y, 0.25).item(), rel=1e-10)


def test_sbcl_loss_matches_the_per_anchor_reference():
    z1, z2 = _data(n=8)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0])
    sub = torch.tensor([0, 0, 1, 1, 2, 2, 3, 1])   # class 0 in two subclasses
    tau2 = torch.tensor([0.4, 0.3, 0.5], dtype=torch.float64)
    got = sbcl_loss(z1, z2, y, sub, 0.1, tau2, 0.25).item()
    want = _reference_sbcl(z1, z2, y.tolist(), sub.tolist(), 0.1, tau2, 0.25)
    assert got == pytest.approx(want, rel=1e-10)
    # one subclass per class: term 2 is empty and the loss is SupCon at τ1
    assert sbcl_loss(z1, z2, y, y, 0.1, tau2, 0.25).item() == pytest.approx(
        supcon_loss(z1, z2, y, 0.1).item(), rel=1e-10)
    # rank slices average to the global loss
    halves = [sbcl_loss(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4],
                        sub[r * 4:(r + 1) * 4], 0.1, tau2, 0.25, z1, z2, y, sub,
                        offset=r * 4).item() for r in range(2)]
    assert sum(halves) / 2 == pytest.approx(got, rel=1e-10)


def test_sbcl_loss_gradient_is_finite_when_a_subclass_fills_the_batch():
    z1, z2 = _data(n=4)
    z1.requires_grad_(True)
    y = torch.zeros(4, dtype=torch.long)
    loss = sbcl_loss(z1, z2, y, y, 0.1, torch.tensor([0.3], dtype=torch.float64), 0.5)
    loss.backward()
    assert torch.isfinite(z1.grad).all()


@pytest.mark.parametrize("name, extra", [("supcon", {}), ("kcl", {"k": 2})])
def test_label_aware_methods_pull_same_label_views_together(name, extra):
    torch.manual_seed(0)
    method = create_method(name, create_backbone("resnet_tiny", in_chans=3), proj_dim=32,
                           out_dim=16, **extra)
    assert method.uses_labels and method.views == 2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 3, 16, 16, generator=g)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)

    def gap():  # mean same-label minus different-label cosine of the projections
        method.eval()
        with torch.no_grad():
            z = F.normalize(method.projector(method.encoder(x[:, 0])), dim=1)
        method.train()
        s = z @ z.T
        same = (y[:, None] == y[None, :]) & ~torch.eye(8, dtype=torch.bool)
        return float(s[same].mean() - s[y[:, None] != y[None, :]].mean())

    before = gap()
    for _ in range(20):
        loss = method((x, y))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() > before + 0.1
