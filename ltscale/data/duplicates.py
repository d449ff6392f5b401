"""Byte-identical images: one image under different labels, or in two splits (or roles).

The index records the first 16 bytes of each image's SHA-256 (``image_sha256``, written when the
shards are built); images with equal hashes are byte-identical (a chance collision of 128 bits
does not happen). ``ltscale data build`` and ``data verify`` report the duplicates of a dataset by
split, ``manifest stats`` those of a manifest by role, and evaluation refuses test images that
are also training images (``stages.evaluate``). An index built before the column existed cannot
be checked: the report says so instead of passing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

EXAMPLES = 3
NO_HASHES = ("has no image hashes (built by an older ltscale); rebuild the dataset with "
             "`ltscale data build` to check image content")


def hash_groups(hashes: np.ndarray) -> np.ndarray:
    """For each row of an (n, 16) uint8 hash array, the number of its distinct hash (0..)."""
    words = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(len(hashes), -1).view("<u8")
    hi, lo = words[:, 0], words[:, -1]
    order = np.lexsort((lo, hi))
    hs, ls = hi[order], lo[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (hs[1:] != hs[:-1]) | (ls[1:] != ls[:-1])
    gid = np.empty(len(order), dtype=np.int64)
    gid[order] = np.cumsum(new) - 1
    return gid


def shared_content(hashes_a: np.ndarray, hashes_b: np.ndarray) -> np.ndarray:
    """Mask over the rows of ``hashes_b``: their image also occurs in ``hashes_a``."""
    gid = hash_groups(np.concatenate([hashes_a, hashes_b]))
    return np.isin(gid[len(hashes_a):], gid[:len(hashes_a)])


@dataclass
class Duplicates:
    """What ``find_duplicates`` found; ``checked`` is False (with ``why_not``) for an index
    without image hashes."""

    kind: str = "split"
    checked: bool = True
    why_not: str = ""
    # group -> (distinct images, samples, examples) seen in that group with different labels
    conflicts: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)
    # "a/b" -> (distinct images, examples) that occur in both groups
    across: dict[str, tuple[int, list[str]]] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.conflicts or self.across)

    def lines(self) -> list[str]:
        """One line per finding, or one saying the content was checked clean / not checked."""
        if not self.checked:
            return [f"image content not checked: {self.why_not}"]
        out = [f"{self.kind} {g}: {n} image(s) occur more than once with different labels "
               f"({s} samples), e.g. {'; '.join(ex)}" for g, (n, s, ex) in self.conflicts.items()]
        out += [f"{self.kind}s {pair.replace('/', ' and ')}: {n} byte-identical image(s) in both, "
                f"e.g. {'; '.join(ex)}" for pair, (n, ex) in self.across.items()]
        return out or [f"image content checked: no byte-identical images with different labels "
                       f"or in two {self.kind}s"]

    def as_dict(self) -> dict:
        if not self.checked:
            return {"checked": False, "why_not": self.why_not}
        return {"checked": True,
                "conflicting_labels": {g: {"images": n, "samples": s, "examples": ex}
                                       for g, (n, s, ex) in self.conflicts.items()},
                f"across_{self.kind}s": {p: {"images": n, "examples": ex}
                                         for p, (n, ex) in self.across.items()}}


def find_duplicates(hashes: np.ndarray | None, groups: np.ndarray, names: list[str],
                    labels: np.ndarray, keys: Callable[[np.ndarray], list], *,
                    kind: str = "split", why_not: str = NO_HASHES,
                    examples: int = EXAMPLES) -> Duplicates:
    """Byte-identical images in one group (``groups[i]``: a position in ``names``) with different
    labels (``labels`` >= 0), and images in two groups. ``keys(rows)``: the sample keys of rows
    (called only for the examples)."""
    if hashes is None:
        return Duplicates(kind=kind, checked=False, why_not=why_not)
    report = Duplicates(kind=kind)
    groups, labels = np.asarray(groups, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    gid = hash_groups(hashes)
    dup = np.flatnonzero(np.bincount(gid)[gid] > 1) if len(gid) else gid
    S = len(names)
    # one image, one group, different known labels
    rows = dup[labels[dup] >= 0]
    cell = gid[rows] * S + groups[rows]
    order = np.lexsort((labels[rows], cell))
    cs, ls, rs = cell[order], labels[rows][order], rows[order]
    if len(cs):
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        ends = np.r_[starts[1:], len(cs)] - 1
        bad = ls[starts] != ls[ends]
        for g in range(S):
            sel = np.flatnonzero(bad & (cs[starts] % S == g))
            if not len(sel):
                continue
            shown = []
            for i in sel[:examples]:
                a, b = keys(rs[[starts[i], ends[i]]])
                shown.append(f"{a} (label {ls[starts[i]]}) = {b} (label {ls[ends[i]]})")
            samples = int(np.isin(cs, cs[starts[sel]]).sum())
            report.conflicts[names[g]] = (len(sel), samples, shown)
    # one image in two groups
    cells = np.unique(gid[dup] * S + groups[dup])
    g_of, s_of = cells // S, cells % S
    for a in range(S):
        for b in range(a + 1, S):
            both = np.intersect1d(g_of[s_of == a], g_of[s_of == b])
            if len(both):
                shown = []
                for g in both[:examples]:
                    ra = np.flatnonzero((gid == g) & (groups == a))[0]
                    rb = np.flatnonzero((gid == g) & (groups == b))[0]
                    ka, kb = keys(np.array([ra, rb]))
                    shown.append(f"{ka} = {kb}")
                report.across[f"{names[a]}/{names[b]}"] = (len(both), shown)
    return report


def index_duplicates(index) -> Duplicates:
    """``find_duplicates`` over a whole dataset, by split, with the source's labels."""
    return find_duplicates(index.image_hashes(), index.split, index.splits, index.label,
                           lambda rows: [str(k) for k in index.key[rows]],
                           why_not=f"the index at {index.root or '(memory)'} {NO_HASHES}")
