"""EpochSampler: rank shares, tails, determinism, resume (also across world sizes), balancing,
block shuffling and argument checks."""

import math
import warnings
from collections import Counter

import numpy as np
import pytest

from ltscale.core.errors import DataError
from ltscale.data.sampling import EpochSampler, class_probabilities


def ranks(n, world, **kw):
    return [EpochSampler(n, rank=r, world_size=world, **kw) for r in range(world)]


def consume(sampler, k):
    """k batches through ``batches()``, with ``advance`` after each as the training loop does."""
    it, out = sampler.batches(), []
    for _ in range(k):
        out.append(next(it))
        sampler.advance()
    return out


def flat(batches):
    return [p for b in batches for p in b.positions.tolist()]


# --- rank shares and tails ------------------------------------------------------------------------
def test_ranks_get_equal_disjoint_shares_and_epochs_differ():
    samplers = ranks(103, 3, batch_size=8, seed=1)
    per_rank = [list(s.batches()) for s in samplers]
    assert [len(b) for b in per_rank] == [4, 4, 4]  # 103 // 24 = 4 global batches
    assert all(len(b) == 8 for bs in per_rank for b in bs)
    assert all(s.batches_per_epoch() == 4 and s.remaining_batches() == 4 for s in samplers)
    shares = [flat(b) for b in per_rank]
    everything = sum(shares, [])
    assert len(set(everything)) == len(everything) == 96
    # the first j batches of all ranks are the first j·B·W slots of the global order
    order = samplers[0].global_order()
    first_two = sum((flat(b[:2]) for b in per_rank), [])
    assert sorted(first_two) == sorted(order[:48].tolist())
    assert sorted(everything) == sorted(order[:96].tolist())
    for s in samplers:
        s.set_epoch(1)
    assert list(samplers[0]) != shares[0]


def test_pad_tail_gives_every_rank_the_same_number_of_full_batches():
    samplers = ranks(103, 4, batch_size=8, seed=2, tail="pad")
    per_rank = [list(s.batches()) for s in samplers]
    assert [len(b) for b in per_rank] == [4, 4, 4, 4]  # ceil(103 / 32)
    assert all(len(b) == 8 for bs in per_rank for b in bs)
    seen = Counter(sum((flat(b) for b in per_rank), []))
    assert set(seen) == set(range(103))
    assert sum(seen.values()) == 128
    order = samplers[0].global_order()
    assert sorted(order.tolist()) == list(range(103))  # the order itself is neither cut nor padded
    # the 25 padding slots repeat the order's first positions
    assert sorted(p for p, c in seen.items() if c == 2) == sorted(order[:25].tolist())
    last = [bs[-1].positions for bs in per_rank]  # slots 96…127: the last 7, then order[0:25]
    np.testing.assert_array_equal(np.stack(last, 1).ravel(), np.r_[order[96:], order[:25]])


def test_small_pad_example_keeps_every_sample():
    s = ranks(10, 2, batch_size=4, tail="pad")
    shares = [list(x) for x in s]
    assert len(shares[0]) == len(shares[1]) == 8
    assert set(shares[0]) | set(shares[1]) == set(range(10))


def test_keep_tail_reads_every_position_exactly_once_with_a_short_last_batch():
    samplers = ranks(103, 3, batch_size=8, seed=3, tail="keep")
    per_rank = [list(s.batches()) for s in samplers]
    sizes = [[len(b) for b in bs] for bs in per_rank]
    assert sizes == [[8, 8, 8, 8, 3], [8, 8, 8, 8, 2], [8, 8, 8, 8, 2]]  # 35, 34, 34 slots
    counts = Counter(sum((flat(b) for b in per_rank), []))
    assert set(counts) == set(range(103)) and set(counts.values()) == {1}
    single = EpochSampler(103, batch_size=8, tail="keep", shuffle="none")
    batches = list(single.batches())
    assert len(batches) == 13 and len(batches[-1]) == 7
    np.testing.assert_array_equal(np.concatenate([b.positions for b in batches]), np.arange(103))


# --- determinism ----------------------------------------------------------------------------------
def test_same_arguments_give_identical_batches_and_other_epochs_differ():
    kw = dict(batch_size=8, seed=11, rank=1, world_size=3)
    a, b = EpochSampler(103, **kw), EpochSampler(103, **kw)
    a.set_epoch(4)
    b.set_epoch(4)
    ba, bb = list(a.batches()), list(b.batches())
    assert len(ba) == len(bb) == 4
    for x, y in zip(ba, bb):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.seeds, y.seeds)
        assert x.epoch == y.epoch == 4
    b.set_epoch(5)
    other = list(b.batches())
    assert flat(other) != flat(ba)
    old_seeds = set(np.concatenate([x.seeds for x in ba]).tolist())
    assert not set(np.concatenate([o.seeds for o in other]).tolist()) & old_seeds
    c = EpochSampler(103, **(kw | {"seed": 12}))
    c.set_epoch(4)
    assert flat(c.batches()) != flat(ba)


def test_seeds_are_a_function_of_the_global_slot():
    """Rank r's i-th sample has global slot r + W·i: seeds agree with a world-1 run's seeds."""
    one = next(EpochSampler(48, batch_size=48, seed=1).batches())
    for r, s in enumerate(ranks(48, 3, batch_size=16, seed=1)):
        b = next(s.batches())
        np.testing.assert_array_equal(b.positions, one.positions[r::3])
        np.testing.assert_array_equal(b.seeds, one.seeds[r::3])
    assert len(set(one.seeds.tolist())) == 48


def test_seeds_do_not_warn_and_stay_non_negative_for_large_seeds_and_epochs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns on uint64 scalar overflow
        for seed in (7, 2**31 - 1, 2**62):
            s = EpochSampler(20, batch_size=4, seed=seed)
            s.set_epoch(10**6)
            seeds = np.concatenate([b.seeds for b in s.batches()])
            assert (seeds >= 0).all() and len(set(seeds.tolist())) == 20
            np.random.default_rng(int(seeds[0]))  # usable as a generator seed


# --- resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,rank", [(1, 0), (3, 2)])
def test_mid_epoch_resume_yields_exactly_the_remaining_batches(world, rank):
    kw = dict(batch_size=8, seed=4, rank=rank, world_size=world)
    ref = EpochSampler(103, **kw)
    ref.set_epoch(2)
    full = list(ref.batches())
    a = EpochSampler(103, **kw)
    a.set_epoch(2)
    k = 2
    done = consume(a, k)
    state = a.state_dict()
    assert state["global_consumed"] == k * 8 * world and state["epoch"] == 2
    b = EpochSampler(103, batch_size=8, seed=0, rank=rank, world_size=world)  # seed from state
    b.load_state_dict(state)
    rest = list(b.batches())
    assert len(done) + len(rest) == len(full) and b.remaining_batches() == len(full) - k
    for x, y in zip(done + rest, full):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.seeds, y.seeds)
        assert x.epoch == y.epoch == 2


def test_resume_with_class_balance_redraws_the_same_epoch():
    labels = np.repeat(np.arange(3), [40, 10, 3])
    kw = dict(batch_size=5, seed=9, balance="class", labels=labels)
    ref = EpochSampler(53, **kw)
    ref.set_epoch(1)
    full = flat(ref.batches())
    a = EpochSampler(53, **kw)
    a.set_epoch(1)
    consume(a, 3)
    b = EpochSampler(53, **kw)
    b.load_state_dict(a.state_dict())
    assert flat(b.batches()) == full[15:]


def test_legacy_per_rank_state_is_converted():
    a = EpochSampler(50, batch_size=5, seed=4, rank=1, world_size=2)
    a.set_epoch(2)
    full = list(a)
    b = EpochSampler(50, batch_size=5, rank=1, world_size=2)
    b.load_state_dict({"epoch": 2, "seed": 4, "consumed": 10})  # no global_consumed
    assert list(b) == full[10:]


def _world_change(n, tail, w1, b1, k, w2, b2, seed=6):
    """k batches on every rank of world w1, then the rest of the epoch on world w2."""
    before, state = [], None
    for s in ranks(n, w1, batch_size=b1, seed=seed, tail=tail):
        s.set_epoch(3)
        before += flat(consume(s, k))
        if s.rank == 0:
            state = s.state_dict()
    after, new = [], ranks(n, w2, batch_size=b2, seed=seed, tail=tail)
    for s in new:
        s.load_state_dict(state)
        after += flat(s.batches())
    ref = EpochSampler(n, batch_size=b1, seed=seed, world_size=w1, tail=tail)
    ref.set_epoch(3)
    return before, after, ref.global_order(), state


@pytest.mark.parametrize("w1,b1,w2,b2", [(2, 4, 1, 8), (1, 8, 2, 4)])
@pytest.mark.parametrize("tail", ["drop", "keep"])
def test_world_size_change_neither_repeats_nor_skips(tail, w1, b1, w2, b2):
    before, after, order, state = _world_change(103, tail, w1, b1, 3, w2, b2)
    assert state["global_consumed"] == 24
    assert sorted(before) == sorted(order[:24].tolist())
    both = before + after
    assert len(set(both)) == len(both)  # nothing repeated
    if tail == "drop":  # the first N·(global batch) slots: 12 global batches of 8
        assert sorted(both) == sorted(order[:96].tolist())
    else:
        assert sorted(both) == list(range(103))


@pytest.mark.parametrize("tail", ["drop", "pad"])
def test_world_size_change_to_a_larger_global_batch_recomputes_the_tail_on_the_rest(tail):
    before, after, order, _ = _world_change(100, tail, 1, 10, 1, 3, 10)
    # 90 samples are left: exactly 3 global batches of 30, so nothing to drop and nothing to pad
    assert len(before) == 10 and len(after) == 90
    assert sorted(before + after) == list(range(100))


@pytest.mark.parametrize("tail,after_len", [("drop", 60), ("pad", 90)])
def test_world_size_change_cuts_or_pads_what_remains(tail, after_len):
    """100 samples, 2 global batches of 10 read, then world 3 × 10: 80 remain → drop reads 60
    (two global batches of 30), pad reads 90 (the 10 extra repeat the order's first slots)."""
    before, after, order, state = _world_change(100, tail, 2, 5, 2, 3, 10)
    assert state["global_consumed"] == 20 and len(before) == 20 and len(after) == after_len
    both = before + after
    if tail == "drop":
        assert len(set(both)) == len(both) and sorted(both) == sorted(order[:80].tolist())
    else:
        assert set(both) == set(range(100))
        assert sorted(p for p, c in Counter(both).items() if c == 2) == sorted(order[:10].tolist())


# --- class balancing ------------------------------------------------------------------------------
COUNTS = [500, 100, 20, 5]


def lt_labels(seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(4), COUNTS))


def epoch_counts(balance, epoch=0, epochs=None, labels=None):
    labels = lt_labels() if labels is None else labels
    s = EpochSampler(len(labels), batch_size=25, seed=1, balance=balance, labels=labels,
                     epochs=epochs, tail="keep")
    s.set_epoch(epoch)
    order = s.global_order()
    assert len(order) == s.epoch_length() == len(labels) == 625
    return np.bincount(labels[order], minlength=4), order, labels


def test_class_balance_draws_each_class_equally_and_cycles_members():
    counts, order, labels = epoch_counts("class")
    assert counts.sum() == 625
    assert np.abs(counts - 625 / 4).max() <= 1 and sorted(counts.tolist()) == [156, 156, 156, 157]
    per_member = Counter(order.tolist())
    for c, n in enumerate(COUNTS):
        draws = [per_member.get(int(p), 0) for p in np.flatnonzero(labels == c)]
        lo = counts[c] // n
        # whole permutations of the class before any member repeats: counts differ by at most 1
        assert set(draws) <= {lo, lo + 1} and sum(draws) == counts[c]
    five = [per_member[int(p)] for p in np.flatnonzero(labels == 3)]
    assert sorted(five) == [31, 31, 31, 31, 32]  # 156 = 5·31 + 1


def test_class_draw_repeats_no_member_before_the_whole_class_was_drawn():
    """The draw (before ordering) takes whole permutations of each class: every run of
    ``len(class)`` consecutive draws of a class is a permutation of its members."""
    labels = lt_labels()
    s = EpochSampler(625, batch_size=25, seed=1, balance="class", labels=labels)
    drawn = s._draw()
    for c, n in enumerate(COUNTS):
        mine = drawn[labels[drawn] == c]
        members = sorted(np.flatnonzero(labels == c).tolist())
        for i in range(0, len(mine) - n + 1, n):
            assert sorted(mine[i:i + n].tolist()) == members
        assert len(set(mine[len(mine) // n * n:].tolist())) == len(mine) % n


def test_sqrt_balance_is_proportional_to_the_root_of_class_size():
    counts, _, _ = epoch_counts("sqrt")
    want = 625 * np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    assert counts.sum() == 625 and np.abs(counts - want).max() < 1


def test_progressive_balance_moves_from_instance_to_class_frequencies():
    first, _, _ = epoch_counts("progressive", epoch=0, epochs=5)
    np.testing.assert_array_equal(first, COUNTS)
    middle, _, _ = epoch_counts("progressive", epoch=2, epochs=5)
    want = 625 * (0.5 * np.array(COUNTS) / 625 + 0.5 * 0.25)
    assert np.abs(middle - want).max() < 1
    last, _, _ = epoch_counts("progressive", epoch=4, epochs=5)
    assert sorted(last.tolist()) == [156, 156, 156, 157]


def test_class_balance_ignores_absent_classes():
    labels = np.repeat([0, 2], [30, 10])  # class 1 has no members
    s = EpochSampler(40, batch_size=4, balance="class", labels=labels, tail="keep")
    got = np.bincount(labels[s.global_order()], minlength=3)
    assert got.tolist() == [20, 0, 20]
    np.testing.assert_allclose(class_probabilities(np.array([30, 0, 10]), "class"), [0.5, 0, 0.5])


def test_balanced_epoch_gives_ranks_equal_batches():
    labels = lt_labels()
    samplers = ranks(625, 4, batch_size=16, balance="class", labels=labels, seed=2)
    lens = [len(list(s.batches())) for s in samplers]
    assert lens == [625 // 64] * 4


# --- block shuffle --------------------------------------------------------------------------------
def test_block_shuffle_keeps_each_window_group_within_window_blocks():
    n, block, window = 1024, 16, 4
    rows = np.random.default_rng(5).permutation(n)  # position p is stored at on-disk row rows[p]
    span = block * window
    blocky = EpochSampler(n, batch_size=span, shuffle="block", rows=rows, block_size=block,
                          window=window, seed=3)
    shuffled = EpochSampler(n, batch_size=span, shuffle="global", rows=rows, seed=3)
    firsts = set()
    for epoch in range(3):
        blocky.set_epoch(epoch)
        shuffled.set_epoch(epoch)
        order, glob = blocky.global_order(), shuffled.global_order()
        assert sorted(order.tolist()) == list(range(n))  # still a permutation
        touched = [len(np.unique(rows[order[i:i + span]] // block)) for i in range(0, n, span)]
        spread = [len(np.unique(rows[glob[i:i + span]] // block)) for i in range(0, n, span)]
        assert max(touched) <= window
        assert min(spread) >= 5 * window  # a global shuffle touches ~40 of the 64 blocks
        firsts.add(tuple(np.unique(rows[order[:span]] // block)))
        # within a group the samples are mixed, not left in disk order
        assert not np.all(np.diff(rows[order[:span]]) > 0)
    assert len(firsts) == 3  # blocks are reshuffled every epoch


def test_block_shuffle_with_a_partial_last_block_is_still_a_permutation():
    s = EpochSampler(1000, batch_size=10, shuffle="block", block_size=16, window=4, tail="keep")
    assert sorted(s.global_order().tolist()) == list(range(1000))
    shares = [flat(d.batches()) for d in ranks(1000, 3, batch_size=10, shuffle="block",
                                                block_size=16, window=4)]
    assert [len(x) for x in shares] == [330] * 3  # 1000 // 30 global batches of 10 each
    everything = sum(shares, [])
    assert len(set(everything)) == 990


def test_no_shuffle_is_position_order():
    s = EpochSampler(30, batch_size=4, shuffle=False, tail="keep")
    assert list(s) == list(range(30))
    assert EpochSampler(30, batch_size=4, shuffle=True).shuffle == "global"


# --- argument checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"shuffle": "random"}, "unknown shuffle"),
    ({"balance": "focal"}, "unknown balance"),
    ({"tail": "cut"}, "unknown tail"),
    ({"balance": "class"}, "needs the samples' labels"),
    ({"balance": "sqrt"}, "needs the samples' labels"),
    ({"balance": "progressive", "labels": np.zeros(10, int)}, "number of epochs"),
    ({"balance": "class", "labels": np.array([0] * 9 + [-1])}, "unlabeled"),
    ({"rank": 2, "world_size": 2}, "outside world size"),
    ({"rank": -1, "world_size": 2}, "outside world size"),
])
def test_bad_arguments_raise_data_error(kw, match):
    with pytest.raises(DataError, match=match):
        EpochSampler(10, batch_size=2, **kw)


def test_empty_manifest_and_unknown_balance_in_probabilities_raise():
    with pytest.raises(DataError, match="empty"):
        EpochSampler(0, batch_size=2)
    with pytest.raises(DataError, match="unknown balance"):
        class_probabilities(np.array([1, 2]), "focal")


@pytest.mark.parametrize("key,value", [("balance", "class"), ("shuffle", "none")])
def test_loading_a_state_of_another_order_raises(key, value):
    labels = np.arange(10) % 2
    a = EpochSampler(10, batch_size=2, labels=labels, **{key: value})
    b = EpochSampler(10, batch_size=2, labels=labels)
    with pytest.raises(DataError, match=f"{key}="):
        b.load_state_dict(a.state_dict())
    assert math.isclose(b.global_consumed(), 0)
