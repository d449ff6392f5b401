"""The SSL losses against plain references: numpy and explicit loops on small tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltscale.losses.ssl import (
    barlow_twins_loss,
    barlow_twins_single,
    batch_standardize,
    byol_loss,
    cross_correlation,
    infonce_with_queue,
    nt_xent,
    rotation_loss,
)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nt_xent_ref(z1, z2, t):
    """Mean over all 2N anchors of −log softmax(positive) over the other 2N − 1 projections."""
    z = _unit(np.concatenate([z1, z2]))
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    return total / n2


def test_nt_xent_matches_the_loop_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for t in (0.1, 0.5):
        assert nt_xent(z1, z2, t).item() == pytest.approx(_nt_xent_ref(z1, z2, t), rel=1e-5)


def test_nt_xent_rank_shares_average_to_the_global_loss_and_gradient():
    torch.manual_seed(1)
    z1 = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    full = nt_xent(z1, z2, 0.5)
    g_full = torch.autograd.grad(full, (z1, z2))
    # two simulated ranks of 4: each sees its own anchors and the gathered batch as candidates
    shares = [nt_xent(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], 0.5, z1, z2, offset=r * 4)
              for r in range(2)]
    mean = (shares[0] + shares[1]) / 2  # data parallelism averages the ranks
    assert mean.item() == pytest.approx(full.item(), rel=1e-10)
    for a, b in zip(torch.autograd.grad(mean, (z1, z2)), g_full):
        torch.testing.assert_close(a, b)


def test_nt_xent_ignores_scale_and_rewards_aligned_views():
    z = torch.randn(6, 4)
    assert nt_xent(z, 3 * z, 0.5).item() == pytest.approx(nt_xent(z, z, 0.5).item(), rel=1e-5)
    assert nt_xent(z, z, 0.5) < nt_xent(z, torch.randn(6, 4), 0.5)


def test_infonce_with_queue_matches_the_loop_reference_and_stops_key_gradients():
    torch.manual_seed(2)
    q = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    queue = torch.tensor(_unit(np.random.default_rng(0).normal(size=(6, 5))))
    t = 0.2
    qn, kn = _unit(q.detach()), _unit(k.detach())
    ref = np.mean([-(qn[i] @ kn[i] / t) + math.log(math.exp(qn[i] @ kn[i] / t)
                   + sum(math.exp(qn[i] @ queue[j].numpy() / t) for j in range(6)))
                   for i in range(4)])
    loss = infonce_with_queue(q, k, queue, t)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert k.grad is None and q.grad is not None


def test_byol_loss_is_two_minus_two_cosine():
    p, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    ref = np.mean([2 - 2 * (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
                   for a, b in zip(p.numpy(), z.numpy())])
    assert byol_loss(p, z).item() == pytest.approx(ref, rel=1e-6)
    assert byol_loss(p, 2 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0)
    z.requires_grad_(True)
    p.requires_grad_(True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None


def _barlow_ref(z1, z2, lam, eps=1e-5):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


def test_barlow_twins_matches_the_loop_reference():
    torch.manual_seed(3)
    z1, z2 = torch.randn(6, 4) * 3 + 1, torch.randn(6, 4)
    assert barlow_twins_single(z1, z2, 0.005).item() == pytest.approx(
        _barlow_ref(z1, z2, 0.005), rel=1e-4)
    # identical views give C_ii = 1 (up to eps): no on-diagonal term left
    assert barlow_twins_single(z1, z1, 0.0).item() == pytest.approx(0.0, abs=1e-4)
    # the standardisation is a non-affine BatchNorm in training mode
    bn = F.batch_norm(z1, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(batch_standardize(z1, z1.mean(0), z1.var(0, unbiased=False)), bn)


def test_barlow_twins_two_rank_split_equals_the_concatenated_batch():
    """Each simulated rank holds 5 rows; statistics come from the sums of local sums (what the
    method reduces across ranks), C from the ranks' shares; all equals one process on 10 rows."""
    torch.manual_seed(4)
    z1 = torch.randn(10, 3, dtype=torch.float64) * 2 + 3
    z2 = torch.randn(10, 3, dtype=torch.float64)
    n = 10
    ranks = [slice(0, 5), slice(5, 10)]

    def std(z):
        mean = sum(z[r].sum(0) for r in ranks) / n
        var = sum((z[r] - mean).pow(2).sum(0) for r in ranks) / n
        return [batch_standardize(z[r], mean, var) for r in ranks]

    a, b = std(z1), std(z2)
    c = cross_correlation(a[0], b[0], n) + cross_correlation(a[1], b[1], n)
    split = barlow_twins_loss(c, 0.005)
    assert split.item() == pytest.approx(barlow_twins_single(z1, z2, 0.005).item(), rel=1e-10)
    assert split.item() == pytest.approx(_barlow_ref(z1, z2, 0.005), rel=1e-8)


def test_barlow_twins_loss_from_c_counts_on_and_off_diagonal():
    c = torch.tensor([[0.5, 0.2], [-0.1, 1.0]])
    assert barlow_twins_loss(c, 0.1).item() == pytest.approx(0.25 + 0.1 * (0.04 + 0.01))


def test_rotation_loss_is_cross_entropy():
    logits = torch.randn(8, 4)
    targets = torch.arange(4).repeat(2)
    ref = np.mean([-(l[t] - math.log(sum(math.exp(v) for v in l)))
                   for l, t in zip(logits.tolist(), targets.tolist())])
    assert rotation_loss(logits, targets).item() == pytest.approx(ref, rel=1e-5)
