"""Class groups by training count (no torch: manifests use them too).

Two groupings are used in the long-tail literature:

* Many / Medium / Few shot (Yang & Xu 2020, ImageNet-LT style), by absolute count: Many has more
  than ``many`` (100) training images, Few fewer than ``few`` (20), Medium the rest, i.e. 20–100
  *inclusive* (a class with exactly 20 or exactly 100 images is Medium).
* Frequent / Medium / Rare thirds (FASSL, seed 003), by rank: classes sorted by training count,
  largest first, then cut into three groups of (as nearly as possible) equal size. The order is a
  stable sort on descending count, so classes with equal counts keep their index order (the lower
  class index counts as the more frequent) and a run of tied classes may straddle a boundary.
  When C is not a multiple of 3 the remainder goes to the front groups: C = 3k+1 gives sizes
  (k+1, k, k), C = 3k+2 gives (k+1, k+1, k) — the same split as ``numpy.array_split``.

The counts are a manifest's labeled samples by clean label when every clean label is known (the
designed long tail; symmetric noise inflates the observed counts of tail classes), by observed
label otherwise: see ``Manifest.reference_counts``.
"""

from __future__ import annotations

import numpy as np

MANY, FEW = 100, 20
SHOT_NAMES = ("many", "medium", "few")
THIRD_NAMES = ("frequent", "medium_third", "rare")


def shot_groups(train_counts, many: int = MANY, few: int = FEW) -> dict[str, list[int]]:
    """Many (> many), Medium (few … many inclusive), Few (< few) class indices."""
    if few > many:
        raise ValueError(f"few threshold {few} is above the many threshold {many}")
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > many).tolist(),
            "medium": np.flatnonzero((counts >= few) & (counts <= many)).tolist(),
            "few": np.flatnonzero(counts < few).tolist()}


def frequency_thirds(train_counts) -> dict[str, list[int]]:
    """Frequent / medium / rare thirds of the classes ranked by training count (see module doc).

    Each list is in rank order (most frequent first)."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    parts = np.array_split(order, 3)
    return {name: part.tolist() for name, part in zip(THIRD_NAMES, parts)}
