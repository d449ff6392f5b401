"""Class-count profiles with the shapes of the long-tailed benchmarks the recipes name.

``count_profile(classes, total, largest, smallest)`` is a deterministic, non-increasing profile:
class i of C gets ``largest · (smallest / largest) ** ((i / (C − 1)) ** γ)`` images, γ found by
bisection so the counts sum to ``total`` (γ = 1 is the usual exponential profile; γ < 1 drops
faster, like the Pareto-shaped ImageNet-LT and iNaturalist 2018). The rounded counts are then
nudged one image at a time, head to tail, to hit ``total`` exactly.

A fraction f of a dataset keeps every (1/f)-th class of the profile (the same largest and
smallest class, the same shape), so both the samples and the classes scale with f.
"""

from __future__ import annotations

import math

import numpy as np

# name: (classes, train images, largest class, smallest class)
DATASETS = {
    "imagenet_lt": (1000, 115_846, 1280, 5),
    "inat2018": (8142, 437_513, 1000, 2),
    "imagenet1k": (1000, 1_281_167, 1300, 732),
}


def _shape(classes: int, gamma: float, largest: int, smallest: int) -> np.ndarray:
    t = np.arange(classes) / max(1, classes - 1)
    return largest * (smallest / largest) ** (t ** gamma)


def count_profile(classes: int, total: int, largest: int, smallest: int) -> np.ndarray:
    """Images per class, most first: ``largest`` … ``smallest``, summing to ``total``."""
    if classes < 1 or not 1 <= smallest <= largest:
        raise ValueError(f"count_profile: need classes ≥ 1 and 1 ≤ smallest ≤ largest "
                         f"(got {classes}, {smallest}, {largest})")
    if classes == 1:
        return np.array([total], dtype=np.int64)
    lo_sum, hi_sum = smallest * (classes - 1) + largest, largest * (classes - 1) + smallest
    if not lo_sum <= total <= hi_sum:
        raise ValueError(f"count_profile: {total} images cannot spread over {classes} classes "
                         f"from {largest} down to {smallest} ({lo_sum} … {hi_sum})")
    lo, hi = -12.0, 12.0  # log γ
    for _ in range(100):  # the sum falls as γ falls
        mid = (lo + hi) / 2
        if _shape(classes, math.exp(mid), largest, smallest).sum() > total:
            hi = mid
        else:
            lo = mid
    counts = np.rint(_shape(classes, math.exp((lo + hi) / 2), largest, smallest)).astype(np.int64)
    counts[0], counts[-1] = largest, smallest
    diff, i = int(total - counts.sum()), 1
    step = 1 if diff > 0 else -1
    while diff:  # one image at a time, head to tail, keeping the order and the bounds
        if classes == 2:
            raise ValueError("count_profile: two classes cannot hit the total")
        j = 1 + (i - 1) % (classes - 2)
        new = counts[j] + step
        if counts[j + 1] <= new <= counts[j - 1]:
            counts[j] = new
            diff -= step
        i += 1
        if i > 10 * classes * (abs(diff) + 1):
            raise ValueError("count_profile: could not hit the total")  # pragma: no cover
    return counts


def dataset_counts(name: str, fraction: float = 1.0) -> np.ndarray:
    """The profile of dataset ``name`` at ``fraction``: every (1/f)-th class, at least one."""
    classes, total, largest, smallest = DATASETS[name]
    counts = count_profile(classes, total, largest, smallest)
    keep = max(1, round(classes * fraction))
    return counts[np.unique(np.linspace(0, classes - 1, keep).round().astype(np.int64))]


def labels_from_counts(counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """One label per sample (class c repeated counts[c] times), shuffled with ``seed``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)
