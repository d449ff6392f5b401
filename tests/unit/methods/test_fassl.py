"""FASSL: the losses and sample weights against explicit loops, rare-prototype samples weighing
more, and the hand-over between stages (SDCLR → fassl_proto → fassl) through ``init_from``."""

import math

import numpy as np
import pytest
import torch

from ltscale.core.errors import RecipeError
from ltscale.losses.fassl import (
    consistency_loss,
    frequency_weights,
    prototype_contrastive_loss,
    prototype_similarity_sums,
    rebalanced_loss,
    similarity_distributions,
)
from ltscale.methods import create_method
from ltscale.methods.probe import OnlineProbe
from ltscale.models import create_backbone

B, SIZE = 8, 16
SMALL = dict(proj_dim=32, out_dim=16)


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    opts = SMALL | ({"prototypes": 8} if name.startswith("fassl") else {}) | kw
    return create_method(name, create_backbone("resnet_tiny", in_chans=3), **opts)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, 3, SIZE, SIZE, generator=g), torch.zeros(B, dtype=torch.long)


# --- losses against plain loops ---------------------------------------------------------------

def _scores_ref(z, p):
    """h_ik = Σ_d p_kd z_id with explicit loops."""
    z, p = np.asarray(z, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return np.array([[sum(p[k, d] * z[i, d] for d in range(z.shape[1]))
                      for k in range(p.shape[0])] for i in range(z.shape[0])])


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _contrastive_ref(z1, z2, p, beta):
    """Eq. 2 on h = P·z: each of the 2n anchors against its other view, over all 2n − 1 others."""
    h = np.concatenate([_scores_ref(z1, p), _scores_ref(z2, p)])
    n2 = len(h)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denom = sum(math.exp(_cos(h[i], h[j]) / beta) for j in range(n2) if j != i)
        total += -math.log(math.exp(_cos(h[i], h[pos]) / beta) / denom)
    return total / n2


def test_similarity_distributions_and_contrastive_loss_match_loops():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    p = torch.randn(6, 4, dtype=torch.float64)
    np.testing.assert_allclose(similarity_distributions(z1, p).numpy(), _scores_ref(z1, p))
    for beta in (0.2, 0.5):
        assert prototype_contrastive_loss(z1, z2, p, beta).item() == pytest.approx(
            _contrastive_ref(z1, z2, p, beta), rel=1e-9)


def test_contrastive_loss_rank_shares_average_to_the_global_loss_and_gradients():
    torch.manual_seed(1)
    z1 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    full = prototype_contrastive_loss(z1, z2, p, 0.2)
    g_full = torch.autograd.grad(full, (z1, z2, p))
    shares = [prototype_contrastive_loss(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], p, 0.2,
                                         z1, z2, offset=r * 4) for r in range(2)]
    mean = (shares[0] + shares[1]) / 2
    assert mean.item() == pytest.approx(full.item(), rel=1e-10)
    for a, b in zip(torch.autograd.grad(mean, (z1, z2, p)), g_full):
        torch.testing.assert_close(a, b)


def _weights_ref(z, p, clip):
    """φ_i = exp(−Σ_k ⟨z_i, p_k⟩), exponents clipped to mean ± clip·std, divided by the mean φ."""
    z, p = np.asarray(z, dtype=np.float64), np.asarray(p, dtype=np.float64)
    a = []
    for i in range(len(z)):
        s = 0.0
        for k in range(len(p)):
            s += sum(z[i, d] * p[k, d] for d in range(z.shape[1]))
        a.append(-s)
    a = np.array(a)
    if clip > 0:
        lo, hi = a.mean() - clip * a.std(), a.mean() + clip * a.std()
        a = np.array([min(max(v, lo), hi) for v in a])
    phi = [math.exp(v) for v in a]
    return np.array([f / (sum(phi) / len(phi)) for f in phi])


@pytest.mark.parametrize("clip", [0.0, 1.0, 3.0])
def test_frequency_weights_match_loops(clip):
    torch.manual_seed(2)
    z, p = torch.randn(7, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64) * 0.5
    w = frequency_weights(z, p, clip)
    np.testing.assert_allclose(w.numpy(), _weights_ref(z, p, clip), rtol=1e-10)
    assert w.mean().item() == pytest.approx(1.0)
    if clip == 1.0:  # clipping really bounds the outliers here
        assert w.max() < frequency_weights(z, p, 0.0).max()
    s = prototype_similarity_sums(z, p)
    np.testing.assert_allclose(s.numpy(), _scores_ref(z, p).sum(1))


def test_rare_prototype_samples_get_larger_weights():
    """Seven prototypes near a frequent class's direction e1, one near a rare class's e2:
    samples of the rare class resemble few prototypes and weigh more."""
    g = torch.Generator().manual_seed(3)
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    protos = torch.cat([e1 + 0.1 * torch.randn(7, 4, generator=g),
                        e2 + 0.1 * torch.randn(1, 4, generator=g)])
    frequent = e1 + 0.1 * torch.randn(6, 4, generator=g)
    rare = e2 + 0.1 * torch.randn(2, 4, generator=g)
    w = frequency_weights(torch.cat([frequent, rare]), protos, clip=3.0)
    assert w[6:].min() > w[:6].max()
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert not w.requires_grad


def test_rebalanced_loss_matches_loops_and_spares_the_teacher():
    torch.manual_seed(4)
    p = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 1.5, 1.0, 0.2, 1.8], dtype=torch.float64)
    pn, zn = p.detach().numpy(), z.detach().numpy()
    ref = 0.0
    for i in range(5):
        a = pn[i] / math.sqrt(sum(v * v for v in pn[i]))
        b = zn[i] / math.sqrt(sum(v * v for v in zn[i]))
        ref += w[i].item() * sum((a[d] - b[d]) ** 2 for d in range(3))
    loss = rebalanced_loss(p, z, w)
    assert loss.item() == pytest.approx(ref / 5, rel=1e-10)
    np.testing.assert_allclose(consistency_loss(p, z).detach().numpy(),
                               2 - 2 * np.sum(pn * zn, 1) / np.linalg.norm(pn, axis=1)
                               / np.linalg.norm(zn, axis=1))
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0


# --- stages and their hand-over ---------------------------------------------------------------

def _params_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fassl_proto_takes_over_the_sdclr_network():
    sd = build("sdclr", seed=1)
    proto = build("fassl_proto", seed=2)
    assert not _params_equal(proto.encoder, sd.encoder)
    protos_before = proto.prototypes.detach().clone()
    proto.init_from(OnlineProbe(sd, 4))  # monitors around the previous method are looked through
    assert _params_equal(proto.encoder, sd.encoder) and _params_equal(proto.projector,
                                                                       sd.projector)
    assert torch.equal(proto.prototypes, protos_before)  # stage one learns its own prototypes


def test_fassl_proto_trains_network_and_prototypes_together():
    proto = build("fassl_proto")
    proto.train()
    opt = torch.optim.SGD(proto.parameters(), lr=0.5)
    before = proto.prototypes.detach().clone()
    loss = proto(batch())["loss"]
    opt.zero_grad()
    loss.backward()
    assert proto.prototypes.grad.abs().sum() > 0
    assert proto.encoder.conv1.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(proto.prototypes.detach(), before)


def test_fassl_takes_prototypes_projector_and_starts_teacher_and_student_alike():
    proto = build("fassl_proto", seed=1)
    with torch.no_grad():
        proto.prototypes.mul_(3)
    student = build("fassl", seed=2)
    with pytest.raises(RecipeError, match="fassl_proto stage"):
        student.set_epoch(0, 1)  # training refuses to start without stage one's prototypes
    student.init_from(proto)
    student.set_epoch(0, 1)
    assert torch.equal(student.prototypes, proto.prototypes.detach())
    assert bool(student.has_prototypes)
    assert _params_equal(student.encoder, proto.encoder)
    assert _params_equal(student.projector, proto.projector)
    teacher_enc, teacher_proj = student.teacher.target
    assert _params_equal(teacher_enc, proto.encoder) and _params_equal(teacher_proj,
                                                                       proto.projector)
    # copies, not shared tensors: the teacher moves only by the EMA
    assert teacher_enc.conv1.weight.data_ptr() != student.encoder.conv1.weight.data_ptr()
    # the prototypes and the flag travel in checkpoints (a resumed stage two keeps them)
    fresh = build("fassl", seed=3)
    fresh.load_state_dict(student.state_dict())
    assert torch.equal(fresh.prototypes, proto.prototypes.detach()) and bool(fresh.has_prototypes)


def test_init_from_refuses_a_stage_it_cannot_start_from():
    with pytest.raises(RecipeError, match=r"fassl cannot start from a sdclr stage"):
        build("fassl").init_from(build("sdclr"))
    with pytest.raises(RecipeError, match=r"fassl_proto cannot start from a byol stage"):
        build("fassl_proto").init_from(build("byol", proj_dim=32, out_dim=16, pred_dim=32))
    with pytest.raises(RecipeError, match=r"8 prototypes .* learned 4"):
        build("fassl", prototypes=8).init_from(build("fassl_proto", prototypes=4))
    with pytest.raises(RecipeError, match=r"sdclr stage: its layer widths are \[32, 32, 32, 16\], "
                       r"fassl_proto's are \[32, 64, 64, 16\]"):
        build("fassl_proto", proj_dim=64).init_from(build("sdclr"))


def test_fassl_trains_the_student_with_frequency_weights_and_moves_the_teacher_by_ema():
    proto = build("fassl_proto", seed=1)
    fassl = build("fassl", seed=2, momentum=0.99)
    fassl.init_from(proto)
    fassl.train()
    x, y = batch()
    with torch.no_grad():  # the loss is Eq. 3 symmetrised over the views
        out = fassl((x, y))
        flat = x.flatten(0, 1)
        p1, p2 = fassl.predictor(fassl.projector(fassl.encoder(flat))).view(B, 2, -1).unbind(1)
        t1, t2 = fassl.teacher(flat).view(B, 2, -1).unbind(1)
        w1, w2 = (frequency_weights(t, fassl.prototypes, 3.0) for t in (t1, t2))
        expected = rebalanced_loss(p1, t2, w2) + rebalanced_loss(p2, t1, w1)
        uniform = rebalanced_loss(p1, t2, torch.ones(B)) + rebalanced_loss(p2, t1, torch.ones(B))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() != pytest.approx(uniform.item(), rel=1e-4)  # the weights matter
    assert out["weight_max"].item() == pytest.approx(max(w1.max(), w2.max()).item(), rel=1e-6)

    trained = {id(p) for g in fassl.param_groups() for p in g["params"]}
    assert not trained & {id(p) for p in fassl.teacher.parameters()}
    opt = torch.optim.SGD([p for g in fassl.param_groups() for p in g["params"]], lr=0.1)
    teacher_before = [p.detach().clone() for p in fassl.teacher.parameters()]
    protos = fassl.prototypes.clone()
    loss = fassl((x, y))["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    fassl.after_step(0, 10)
    online = [p for m in (fassl.encoder, fassl.projector) for p in m.parameters()]
    for t, b, o in zip(fassl.teacher.parameters(), teacher_before, online):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * o.detach())
    assert torch.equal(fassl.prototypes, protos)  # fixed in stage two
