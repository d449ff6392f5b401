import numpy as np

from ltscale.data.sampling import EpochSampler


def test_ranks_get_equal_disjoint_shares_and_epochs_differ():
    samplers = [EpochSampler(103, batch_size=8, seed=1, rank=r, world_size=3) for r in range(3)]
    shares = [list(s) for s in samplers]
    assert {len(s) for s in shares} == {32}  # 103 // 24 = 4 batches of 8 per rank
    flat = sum(shares, [])
    assert len(set(flat)) == len(flat)
    for s in samplers:
        s.set_epoch(1)
    assert list(samplers[0]) != shares[0]


def test_padding_instead_of_dropping_keeps_every_sample():
    s = [EpochSampler(10, batch_size=4, tail="pad", rank=r, world_size=2) for r in range(2)]
    shares = [list(x) for x in s]
    assert len(shares[0]) == len(shares[1]) == 8
    assert set(shares[0]) | set(shares[1]) == set(range(10))


def test_resume_continues_with_the_next_position():
    a = EpochSampler(50, batch_size=5, seed=4)
    a.set_epoch(2)
    full = list(a)
    b = EpochSampler(50, batch_size=5, seed=0)
    a.advance(3)
    b.load_state_dict(a.state_dict())
    assert list(b) == full[15:]
    np.testing.assert_array_equal(sorted(full), np.arange(50))
