import numpy as np
import pytest

from ltscale.bench.profiles import DATASETS, count_profile, dataset_counts, labels_from_counts


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_real_profiles_have_the_real_shape(name):
    classes, total, largest, smallest = DATASETS[name]
    counts = dataset_counts(name)
    assert len(counts) == classes and counts.sum() == total
    assert counts[0] == largest and counts[-1] == smallest and counts.min() == smallest
    assert (np.diff(counts) <= 0).all()
    assert np.array_equal(counts, dataset_counts(name))  # deterministic


def test_long_tail_is_pareto_like_and_fractions_keep_the_shape():
    counts = dataset_counts("imagenet_lt")
    assert np.median(counts) < counts.mean() < 200  # most classes small, a few large
    tenth = dataset_counts("imagenet_lt", 0.1)
    assert len(tenth) == 100 and tenth[0] == 1280 and tenth[-1] == 5
    assert abs(tenth.sum() / counts.sum() - 0.1) < 0.01


def test_count_profile_small_and_invalid():
    assert count_profile(3, 12, 6, 2).tolist() == [6, 4, 2]
    assert count_profile(1, 7, 7, 7).tolist() == [7]
    with pytest.raises(ValueError):
        count_profile(10, 5, 100, 1)  # cannot reach the largest class
    labels = labels_from_counts(np.array([3, 1]))
    assert sorted(labels.tolist()) == [0, 0, 0, 1]
