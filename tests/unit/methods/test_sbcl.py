"""SBCL: balanced clustering (cap, tail classes, Algorithm 1's greedy order, determinism, one
assignment on 1 and 2 gloo ranks), dynamic temperatures, and the method's schedule."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltscale.methods import create_method
from ltscale.methods.sbcl_clustering import (
    balanced_kmeans,
    balanced_subclasses,
    capped_greedy_assign,
    class_concentration,
    class_temperatures,
    fill_least_full,
    subclass_cap,
)
from ltscale.models import create_backbone
from tests.unit.methods.test_methods_contract import (
    _Rows,  # a pass-through 'encoder': known features
)


def _long_tailed(counts, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    feats = F.normalize(torch.randn(labels.numel(), d, generator=g), dim=1)
    return feats, labels


def _greedy_reference(x, centers, cap):
    """Algorithm 1's assignment, literally: the most similar remaining pair, one at a time."""
    sim = F.normalize(x, dim=1) @ F.normalize(centers, dim=1).T
    assign, sizes = [-1] * x.shape[0], [0] * centers.shape[0]
    while -1 in assign:
        best = None
        for i in range(x.shape[0]):
            for j in range(centers.shape[0]):
                if assign[i] == -1 and sizes[j] < cap and (best is None or sim[i, j] > best[0]):
                    best = (float(sim[i, j]), i, j)
        _, i, j = best
        assign[i] = j
        sizes[j] += 1
    return assign


@pytest.mark.parametrize("n, m, cap", [(30, 3, 10), (23, 4, 6), (17, 5, 7)])
def test_greedy_assignment_is_algorithm_1(n, m, cap):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    centers = torch.randn(m, 6, generator=g, dtype=torch.float64)
    got = capped_greedy_assign(x, centers, cap)
    assert got.tolist() == _greedy_reference(x, centers, cap)
    assert torch.bincount(got, minlength=m).max() <= cap


def test_subclasses_respect_the_cap_and_keep_tail_classes_whole():
    counts = [120, 60, 25, 9, 4]
    feats, labels = _long_tailed(counts)
    seen = torch.ones_like(labels, dtype=torch.bool)
    ids = balanced_subclasses(feats, labels, seen, 5, delta=10, iters=5, seed=0)
    cap = subclass_cap(torch.tensor(counts), 10)
    assert cap == 10  # max(n_C = 4, δ = 10)
    assert (ids >= 0).all()
    for c, n_c in enumerate(counts):
        own = ids[labels == c].unique()
        assert own.numel() == -(-n_c // cap)           # ⌈n_c / M⌉ subclasses
        sizes = torch.bincount(ids[labels == c])[own]
        assert sizes.max() <= cap
        if c == 0:  # 120 = 12 × 10: every subclass is full
            assert (sizes == cap).all()
        # no subclass is shared with another class
        assert not set(own.tolist()) & set(ids[labels != c].tolist())
    assert ids[labels == 3].unique().numel() == 1 and ids[labels == 4].unique().numel() == 1
    # deterministic for the same features and seed
    again = balanced_subclasses(feats, labels, seen, 5, delta=10, iters=5, seed=0)
    assert torch.equal(ids, again)
    # the cap comes from the smallest class when it is above δ
    assert subclass_cap(torch.tensor([100, 30, 0]), 10) == 30


def test_clustering_recovers_separated_modes_of_a_head_class():
    g = torch.Generator().manual_seed(3)
    modes = F.normalize(torch.randn(3, 16, generator=g), dim=1) * 5
    x = torch.cat([modes[k] + 0.3 * torch.randn(10, 16, generator=g) for k in range(3)])
    truth = torch.arange(3).repeat_interleave(10)
    got = balanced_kmeans(x, 3, 10, iters=10, generator=torch.Generator().manual_seed(0))
    # the same partition up to renaming
    pairs = set(zip(got.tolist(), truth.tolist()))
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3


def test_unseen_samples_fill_the_least_full_subclasses_within_the_cap():
    assert fill_least_full(torch.tensor([3, 1, 2]), 4, 4).tolist() == [1, 1, 2, 0]
    with pytest.raises(ValueError, match="room"):
        fill_least_full(torch.tensor([4, 4]), 4, 1)
    feats, labels = _long_tailed([50, 5])
    seen = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(1)) < 0.5
    ids = balanced_subclasses(feats, labels, seen, 2, delta=10, iters=3, seed=1)
    head = ids[labels == 0]
    assert torch.bincount(head).max() <= 10 and head.unique().numel() == 5
    # a class never seen at all still gets its subclasses, evenly
    none = balanced_subclasses(feats, labels, torch.zeros_like(seen), 2, delta=10)
    assert torch.bincount(none[labels == 0]).tolist() == [10] * 5


def test_looser_class_gets_the_larger_temperature():
    g = torch.Generator().manual_seed(0)
    center = F.normalize(torch.randn(2, 8, generator=g), dim=1)
    tight = F.normalize(center[0] + 0.05 * torch.randn(30, 8, generator=g), dim=1)
    loose = F.normalize(center[1] + 0.8 * torch.randn(30, 8, generator=g), dim=1)
    feats = torch.cat([tight, loose])
    labels = torch.arange(2).repeat_interleave(30)
    seen = torch.ones(60, dtype=torch.bool)
    phi = class_concentration(feats, labels, seen, 2, alpha=10.0)
    # eq. 5 by hand for the tight class
    t = tight.mean(0)
    assert float(phi[0]) == pytest.approx(float((tight - t).norm(dim=1).sum() / (30 * torch.log(
        torch.tensor(40.0)))), rel=1e-5)
    tau2 = class_temperatures(phi, 0.1)
    assert float(tau2[1]) > float(tau2[0]) > 0.1
    assert tau2.tolist() == pytest.approx((0.1 * torch.exp(phi / phi.mean())).tolist())
    # a class with no seen sample gets the mean's temperature τ1·e
    phi3 = class_concentration(feats, torch.cat([labels]), seen, 3, alpha=10.0)
    assert torch.isnan(phi3[2])
    assert float(class_temperatures(phi3, 0.1)[2]) == pytest.approx(0.1 * torch.e)


# --- the method ---------------------------------------------------------------------------------



def _row_method(labels, num_classes, **kw):
    method = create_method("sbcl", _Rows(8), labels=labels, num_classes=num_classes,
                           proj_dim=8, out_dim=8, **kw)
    method.projector = torch.nn.Identity()
    return method


def _bank_rows(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, generator=g, dtype=torch.float32)


def test_method_fills_the_bank_and_follows_the_schedule():
    counts = [40, 12, 3]
    _, labels = _long_tailed(counts)
    n = labels.numel()
    method = _row_method(labels.numpy(), 3, warmup_epochs=2, update_every=3, delta=4,
                         cluster_iters=3)
    x = _bank_rows(n)
    method.train()
    for start in range(0, n, 11):  # positions in batches, as the loader hands them
        pos = torch.arange(start, min(start + 11, n))
        method((x[pos], labels[pos], pos))
    assert method.seen.all()
    want = F.normalize(F.normalize(x[:, 0], dim=1) + F.normalize(x[:, 1], dim=1), dim=1)
    torch.testing.assert_close(method.bank, want)
    for epoch in (0, 1):  # warm-up: nothing clustered
        method.set_epoch(epoch, 10)
        assert not method.clustered and (method.subclass == -1).all()
    method.set_epoch(2, 10)
    assert method.clustered
    first = method.subclass.clone()
    assert (first >= 0).all() and first[labels == 0].unique().numel() == 10  # ⌈40 / 4⌉
    assert (method.tau2 > method.tau1).all()
    method.bank.copy_(F.normalize(torch.randn(n, 8), dim=1))  # new features
    for epoch in (3, 4):
        method.set_epoch(epoch, 10)
        assert torch.equal(method.subclass, first)
    method.set_epoch(5, 10)  # 2 + 3: re-clustered from the new bank
    assert not torch.equal(method.subclass, first)


def test_method_rejects_unlabeled_samples_and_batches_without_positions():
    with pytest.raises(ValueError, match="sample 2 has label -1"):
        _row_method([0, 1, -1], 2)
    method = _row_method([0, 1, 1], 2)
    with pytest.raises(ValueError, match="positions"):
        method((torch.randn(3, 2, 8), torch.tensor([0, 1, 1])))


def test_sbcl_phase_trains_and_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 3)
    n = labels.numel()
    kw = dict(labels=labels.numpy(), num_classes=3, proj_dim=32, out_dim=16, warmup_epochs=1,
              delta=3, cluster_iters=2)
    method = create_method("sbcl", create_backbone("resnet_tiny", in_chans=3), **kw)
    x = torch.randn(n, 2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    batch = (x, labels, torch.arange(n))
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    method.train()
    method.set_epoch(0, 3)
    warm = method(batch)["loss"]  # warm-up loss, fills the bank
    opt.zero_grad()
    warm.backward()
    opt.step()
    method.set_epoch(1, 3)
    assert method.subclass[labels == 0].unique().numel() == 4  # 12 / M = 3
    losses = []
    for _ in range(12):
        loss = method(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    fresh = create_method("sbcl", create_backbone("resnet_tiny", in_chans=3), **kw)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.subclass, method.subclass) and torch.equal(fresh.bank, method.bank)
    assert torch.equal(fresh.tau2, method.tau2) and fresh.clustered
    fresh.eval(), method.eval()
    with torch.no_grad():
        assert fresh(batch)["loss"].item() == pytest.approx(method(batch)["loss"].item(),
                                                            rel=1e-6)


# --- two gloo ranks: each fills its half of the bank; the assignment is the 1-rank one --------

def _rank_main(rank, world, init, out_dir, x, labels):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        method = _row_method(labels.numpy(), 4, warmup_epochs=0, delta=5, cluster_iters=4)
        method.train()
        n = x.shape[0] // world
        for start in range(0, n, 6):  # this rank's half, in steps of 6 per rank
            pos = torch.arange(rank * n + start, rank * n + start + 6)
            method((x[pos], labels[pos], pos))
        method.set_epoch(0, 1)
        torch.save({"subclass": method.subclass, "tau2": method.tau2, "bank": method.bank},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_assignment_is_the_same_on_one_and_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    counts = [30, 18, 7, 5]
    _, labels = _long_tailed(counts, seed=4)
    x = _bank_rows(labels.numel(), seed=5)  # 60 samples: 30 per rank, 5 steps of 6
    mp.spawn(_rank_main, args=(world, f"file://{tmp_path / 'init'}", str(tmp_path), x, labels),
             nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    single = _row_method(labels.numpy(), 4, warmup_epochs=0, delta=5, cluster_iters=4)
    single.train()
    for start in range(0, labels.numel(), 12):
        pos = torch.arange(start, start + 12)
        single((x[pos], labels[pos], pos))
    single.set_epoch(0, 1)
    assert (single.subclass >= 0).all() and single.subclass.unique().numel() == 6 + 4 + 2 + 1
    for r in ranks:
        torch.testing.assert_close(r["bank"], single.bank)
        assert torch.equal(r["subclass"], single.subclass)
        torch.testing.assert_close(r["tau2"], single.tau2)
