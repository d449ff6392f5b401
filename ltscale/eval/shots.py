"""Many / Medium / Few-shot class groups by training count (no torch: manifests use it too).

Many: more than ``many`` (100) training images; Few: fewer than ``few`` (20); Medium: 20–100
inclusive. The counts are a manifest's labeled samples by clean label when every one is known,
by observed label otherwise (see ``Manifest.reference_counts``).
"""

from __future__ import annotations

import numpy as np

MANY, FEW = 100, 20


def shot_groups(train_counts, many: int = MANY, few: int = FEW) -> dict[str, list[int]]:
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > many).tolist(),
            "medium": np.flatnonzero((counts >= few) & (counts <= many)).tolist(),
            "few": np.flatnonzero(counts < few).tolist()}
