"""Manifests: an experimental condition as a tiny file over a shard index.

A manifest lists sample ids (rows of the index) with an observed label (possibly noisy, -1 for
unlabeled samples), the clean label (-1 where unknown) and a role: ``labeled`` (the training set
the learner sees labels of), ``unlabeled`` (images whose labels are withheld: few-label leftovers
and the extra pool D_U), ``val`` and ``test`` (balanced selections). Building one reads no image
bytes (except for ``idn`` noise, made from the pixels) and is deterministic in (index, spec, seed
and, for ``human`` noise, the label file). The header records the spec, the index hash it
was built from, per-class counts (observed and clean), the realised noise rate and a content hash;
the noise transition counts are stored beside the arrays.

Order of construction: balanced val/test selections first (so they can never overlap training
data), then the imbalanced labeled subset, then label noise on it, then the few-label split, then
the unlabeled pool from what is left.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltscale.core.atomic import atomic_path
from ltscale.core.errors import ManifestError
from ltscale.data.index import NPZ_ERRORS, ShardIndex
from ltscale.data.manifest_spec import (
    EvalSelection,
    ImbalanceSpec,
    ManifestSpec,
    NoiseSpec,
    UnlabeledSpec,
)
from ltscale.data.noise import describe, observe, transition_counts, transition_matrix

__all__ = ["ROLES", "EvalSelection", "ImbalanceSpec", "Manifest", "ManifestSpec", "NoiseSpec",
           "UnlabeledSpec", "build_manifest", "longtail_counts"]

ROLES = ["labeled", "unlabeled", "val", "test"]
LABELED, UNLABELED, VAL, TEST = range(4)


def longtail_counts(n_max: int, num_classes: int, imbalance: ImbalanceSpec) -> list[int]:
    """Per-class sample counts, largest first (class order is applied separately).

    exp (CIFAR-LT): n_i = floor(n_max · γ^(−i/(C−1))); step: the last round(μ·C) classes get
    floor(n_max/γ), the others n_max; pareto: class i takes the Pareto(α) quantile at rank
    fraction (i+½)/C, x_i = ((i+½)/C)^(−1/α), mapped linearly onto [n_max/γ, n_max]
    (α = 6, γ = 256 over 1,000 classes gives ImageNet-LT's shape: 1,280 → 5, about 350 classes
    above 100 images and 160 below 20; ImageNet-LT itself has 385 and 136).
    """
    C, p = num_classes, imbalance.profile
    if p in ("none", "natural") or C == 1:
        return [n_max] * C
    if p == "exp":
        return [int(math.floor(n_max * imbalance.ratio ** (-i / (C - 1)))) for i in range(C)]
    n_min = n_max / imbalance.ratio
    if p == "step":
        reduced = int(round(imbalance.mu * C))
        return [n_max if i < C - reduced else int(math.floor(n_min)) for i in range(C)]
    x = ((np.arange(C) + 0.5) / C) ** (-1.0 / imbalance.alpha)
    frac = (x - x.min()) / (x.max() - x.min())
    return [int(math.floor(n_min + (n_max - n_min) * f + 1e-9)) for f in frac]


def _class_order(num_classes: int, imbalance: ImbalanceSpec, seed: int) -> np.ndarray:
    """rank_of[c]: the position of class c in the head-to-tail order."""
    if imbalance.order == "index":
        return np.arange(num_classes)
    perm = np.random.default_rng([seed, 2]).permutation(num_classes)
    rank_of = np.empty(num_classes, dtype=np.int64)
    rank_of[perm] = np.arange(num_classes)
    return rank_of


def _take_per_class(ids: np.ndarray, labels: np.ndarray, wanted: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ``wanted[c]`` of the ids of each class c, sorted (vectorised)."""
    order = np.lexsort((rng.random(len(ids)), labels))
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(len(wanted)))
    rank = np.arange(len(order)) - starts[sorted_labels]
    return np.sort(ids[order[rank < wanted[sorted_labels]]])


def _check_available(wanted, available, classes, what: str, hint: str) -> None:
    short = np.flatnonzero(wanted > available)
    if len(short):
        c = int(short[0])
        raise ManifestError(f"{what}: class {c} ({classes[c]}) needs {int(wanted[c])} samples "
                            f"but only {int(available[c])} are available"
                            f"{f' ({len(short)} classes short)' if len(short) > 1 else ''}; {hint}")


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    raw = total * weights / weights.sum()
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out), kind="stable")[: total - out.sum()]] += 1
    return out


@dataclass
class Manifest:
    ids: np.ndarray       # int64 rows of the index
    observed: np.ndarray  # int64 labels the learner sees (-1: unlabeled)
    clean: np.ndarray     # int64 true labels (-1: unknown)
    role: np.ndarray      # int8, into ROLES
    header: dict
    transition: np.ndarray | None = None  # (clean, observed, count) rows of the labeled role

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return int(self.header["num_classes"])

    @property
    def hash(self) -> str:
        return self.header["hash"]

    @property
    def spec(self) -> ManifestSpec:
        return ManifestSpec.from_dict(self.header["spec"])

    def mask(self, *roles: str) -> np.ndarray:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ManifestError(f"unknown manifest role(s) {sorted(unknown)}; roles are {ROLES}")
        return np.isin(self.role, [ROLES.index(r) for r in roles])

    def rows(self, *roles: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, observed labels) of the samples in ``roles``."""
        m = self.mask(*roles)
        return self.ids[m], self.observed[m]

    def class_counts(self, labels: str = "observed", role: str = "labeled") -> np.ndarray:
        values = getattr(self, labels)[self.mask(role)]
        return np.bincount(values[values >= 0], minlength=self.num_classes)

    def reference_counts(self) -> np.ndarray:
        """Training counts per class for Many/Medium/Few groups: the labeled samples by clean
        label when every clean label is known (the designed long tail), else by observed label."""
        lab = self.mask("labeled")
        if (self.clean[lab] >= 0).all():
            return self.class_counts("clean")
        return self.class_counts("observed")

    def transition_matrix(self) -> np.ndarray:
        pairs = self.transition if self.transition is not None else transition_counts(
            self.clean[self.mask("labeled")], self.observed[self.mask("labeled")],
            self.num_classes)
        return transition_matrix(pairs, self.num_classes)

    def save(self, path: str | Path) -> None:
        extra = {} if self.transition is None else {"transition": self.transition}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=self.ids, observed=self.observed, clean=self.clean,
                         role=self.role, header=np.array(json.dumps(self.header, sort_keys=True)),
                         **extra)

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"manifest not found: {path}; make one with `ltscale manifest make`")
        try:
            with np.load(path, allow_pickle=False) as z:
                m = cls(ids=z["ids"], observed=z["observed"], clean=z["clean"], role=z["role"],
                        header=json.loads(str(z["header"])),
                        transition=z["transition"] if "transition" in z.files else None)
        except (OSError, ValueError, KeyError, *NPZ_ERRORS) as exc:
            raise ManifestError(f"{path}: not a readable ltscale manifest ({exc})") from None
        try:
            matches = _content_hash(m.ids, m.observed, m.clean, m.role, m.header) == \
                m.header.get("hash")
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ManifestError(f"{path}: not a readable ltscale manifest (its header lacks the "
                                "spec or index hash)") from None
        if not matches:
            raise ManifestError(f"{path}: content does not match its recorded hash; the file was "
                                "modified or corrupted. Rebuild it with `ltscale manifest make`.")
        _check_labels(m, path)
        return m

    def check_index(self, index: ShardIndex, where: str = "") -> None:
        """Refuse to use this manifest with shards it was not built from."""
        expected = self.header["index_hash"]
        found = index.content_hash()
        if expected != found:
            raise ManifestError(
                f"manifest {self.hash} was built from index {expected}, but the shards at "
                f"{index.root or where} have index {found}. Rebuild the manifest from these shards "
                "(`ltscale manifest make DIR ...`) or point the recipe at the shards it came from.")
        if len(self.ids) and (self.ids.max() >= len(index) or self.ids.min() < 0):
            raise ManifestError(f"manifest {self.hash} selects rows outside the index at "
                                f"{index.root}")


def _check_labels(m: Manifest, path: Path) -> None:
    """Every label is a class of the manifest (or -1, none): a hand-made file with another label
    would otherwise fail deep inside a loss, long after training started."""
    for name in ("observed", "clean"):
        values = getattr(m, name)
        bad = np.flatnonzero((values < -1) | (values >= m.num_classes))
        if len(bad):
            row = int(bad[0])
            raise ManifestError(f"{path}: {name} label {int(values[row])} of sample row "
                                f"{int(m.ids[row])} is outside the {m.num_classes} classes "
                                f"(0..{m.num_classes - 1}, or -1 for none); {len(bad)} such "
                                "label(s). Rebuild the manifest with `ltscale manifest make`.")


def _content_hash(ids, observed, clean, role, header) -> str:
    h = hashlib.sha256()
    for arr in (ids, observed, clean, role):
        h.update(np.ascontiguousarray(arr).tobytes())
    keyed = {"spec": header["spec"], "index_hash": header["index_hash"]}
    if "noise_source" in header:  # absent from older manifests: their hashes stay valid
        keyed["noise_source"] = header["noise_source"]
    h.update(json.dumps(keyed, sort_keys=True).encode())
    return h.hexdigest()[:16]


# --- building ----------------------------------------------------------------------------------
def _eval_selection(index: ShardIndex, sel: EvalSelection, what: str, taken: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    ids = index.split_ids(sel.split)
    ids = ids[(index.label[ids] >= 0) & ~np.isin(ids, taken)]
    labels = index.label[ids]
    available = np.bincount(labels, minlength=index.num_classes)
    per_class = sel.per_class if sel.per_class is not None else int(available.min())
    wanted = np.full(index.num_classes, per_class)
    _check_available(wanted, available, index.classes, f"{what} selection from split "
                     f"{sel.split!r}", "ask for fewer per class")
    return _take_per_class(ids, labels, wanted, rng)


def _labeled(index: ShardIndex, spec: ManifestSpec, exclude: np.ndarray):
    """Ids of the imbalanced labeled subset and the labels the selection was made on."""
    ids = index.split_ids(spec.split)
    real = spec.noise.kind == "real"
    if real and "noisy_label" not in index.extra_classes:
        raise ManifestError("noise 'real' needs the source's own noisy labels (a noisy_label "
                            "column, as the clothing1m source writes); this index has none")
    select_on = index.extra("noisy_label") if real else index.label
    ids = ids[(select_on[ids] >= 0) & ~np.isin(ids, exclude)]
    labels = select_on[ids]
    C = index.num_classes
    available = np.bincount(labels, minlength=C)
    if spec.imbalance.profile == "natural":
        return ids, labels
    n_max = spec.max_per_class or int(available.min())
    by_rank = np.array(longtail_counts(n_max, C, spec.imbalance))
    wanted = by_rank[_class_order(C, spec.imbalance, spec.seed)]
    empty = np.flatnonzero(wanted < 1)
    if len(empty):
        c = int(empty[0])
        imb = spec.imbalance
        limit = (f"γ must be at most n_max = {n_max} for every class to keep an image"
                 if imb.profile == "exp" else f"n_max/γ = {n_max / imb.ratio:.3g} must be >= 1")
        raise ManifestError(f"imbalance {imb.profile}:{imb.ratio:g} in split {spec.split!r} "
                            f"leaves class {c} ({index.classes[c]}) with no image "
                            f"({len(empty)} of {C} classes empty; n_max = {n_max}); {limit}: "
                            "lower the ratio or raise max_per_class")
    _check_available(wanted, available, index.classes,
                     f"imbalance {spec.imbalance.profile} in split {spec.split!r}",
                     "lower max_per_class")
    chosen = _take_per_class(ids, labels, wanted, np.random.default_rng([spec.seed, 0]))
    return chosen, select_on[chosen]


def _unlabeled_pool(index: ShardIndex, spec: ManifestSpec, n_labeled: int, taken: np.ndarray):
    u: UnlabeledSpec = spec.unlabeled
    total = int(round(u.multiple * n_labeled))
    n_in = int(round(u.relevance * total))
    rng = np.random.default_rng([spec.seed, 5])
    C = index.num_classes
    ids = index.split_ids(u.split or spec.split)
    ids = ids[(index.label[ids] >= 0) & ~np.isin(ids, taken)]
    labels = index.label[ids]
    available = np.bincount(labels, minlength=C)
    if n_in > len(ids):
        raise ManifestError(f"the unlabeled pool asks for {n_in} in-distribution samples "
                            f"({u.multiple}x the {n_labeled} labeled, relevance {u.relevance}) but "
                            f"split {u.split or spec.split!r} has only {len(ids)} unused samples")
    rank_of = _class_order(C, spec.imbalance, spec.seed)
    weights = u.ratio ** (-rank_of / max(C - 1, 1))
    wanted = _largest_remainder(n_in, weights)
    _check_available(wanted, available, index.classes,
                     f"unlabeled pool (ρ_U = {u.ratio})", "lower the multiple or ρ_U")
    pool = _take_per_class(ids, labels, wanted, rng)
    ood = np.zeros(0, dtype=np.int64)
    if total - n_in:
        ood_ids = index.split_ids(u.ood_split)
        ood_ids = ood_ids[~np.isin(ood_ids, taken)]
        if total - n_in > len(ood_ids):
            raise ManifestError(f"the unlabeled pool asks for {total - n_in} out-of-distribution "
                                f"samples but split {u.ood_split!r} has only {len(ood_ids)} available")
        ood = np.sort(rng.choice(ood_ids, size=total - n_in, replace=False))
    return pool, ood


def _few_label_split(observed: np.ndarray, fraction: float, C: int,
                     rng: np.random.Generator) -> np.ndarray:
    """A mask keeping max(1, round(fraction · n_c)) labels of every observed class c."""
    counts = np.bincount(observed, minlength=C)
    keep = np.where(counts > 0, np.maximum(1, np.round(fraction * counts)), 0).astype(np.int64)
    positions = np.arange(len(observed))
    kept = _take_per_class(positions, observed, keep, rng)
    mask = np.zeros(len(observed), dtype=bool)
    mask[kept] = True
    return mask


def build_manifest(index: ShardIndex, spec: ManifestSpec) -> Manifest:
    C = index.num_classes
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # ids, observed, clean, role
    taken = np.zeros(0, dtype=np.int64)
    for role, sel in ((VAL, spec.val), (TEST, spec.test)):
        if sel is not None:
            chosen = _eval_selection(index, sel, ROLES[role], taken,
                                     np.random.default_rng([spec.seed, 10 + role]))
            labels = index.label[chosen]
            parts.append((chosen, labels, labels, role))
            taken = np.union1d(taken, chosen)

    ids, selected_on = _labeled(index, spec, taken)
    clean = index.label[ids].astype(np.int64)
    observed, noise_source = observe(index, spec.noise, spec.seed, ids, clean, selected_on)
    if spec.few_labels is not None:
        keep = _few_label_split(observed, spec.few_labels, C, np.random.default_rng([spec.seed, 4]))
        parts.append((ids[keep], observed[keep], clean[keep], LABELED))
        parts.append((ids[~keep], np.full((~keep).sum(), -1), clean[~keep], UNLABELED))
    else:
        parts.append((ids, observed, clean, LABELED))
    taken = np.union1d(taken, ids)
    n_pool = n_ood = 0
    if spec.unlabeled.multiple > 0:
        pool, ood = _unlabeled_pool(index, spec, len(ids), taken)
        parts.append((pool, np.full(len(pool), -1), index.label[pool], UNLABELED))
        parts.append((ood, np.full(len(ood), -1), np.full(len(ood), -1), UNLABELED))
        n_pool, n_ood = len(pool), len(ood)

    all_ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    role = np.concatenate([np.full(len(p[0]), p[3], dtype=np.int8) for p in parts])
    order = np.lexsort((all_ids, role))
    all_ids, role = all_ids[order], role[order]
    all_obs = np.concatenate([p[1] for p in parts]).astype(np.int64)[order]
    all_clean = np.concatenate([p[2] for p in parts]).astype(np.int64)[order]

    lab = role == LABELED
    pairs = transition_counts(all_clean[lab], all_obs[lab], C)
    counts = np.bincount(all_obs[lab], minlength=C)
    known = lab & (all_clean >= 0)
    clean_counts = np.bincount(all_clean[known], minlength=C)
    ref_counts = clean_counts if known.sum() == lab.sum() else counts
    header = {
        "spec": spec.to_dict(),
        "index_hash": index.content_hash(),
        "dataset": str(index.root) if index.root else None,
        "num_classes": C,
        "classes": index.classes,
        "roles": ROLES,
        "role_counts": {r: int((role == i).sum()) for i, r in enumerate(ROLES)},
        "samples": int(lab.sum()),
        "class_counts": counts.tolist(),
        "clean_class_counts": clean_counts.tolist(),
        "clean_known": int(known.sum()),
        "noise_rate": float((all_obs[known] != all_clean[known]).mean()) if known.any() else 0.0,
        "noise_convention": describe(spec.noise),
        "imbalance_ratio": float(ref_counts.max() / max(ref_counts[ref_counts > 0].min(), 1))
        if ref_counts.any() else 1.0,
        "unlabeled_pool": {"in_distribution": n_pool, "out_of_distribution": n_ood},
    }
    if noise_source is not None:  # the label file's SHA-256, or how IDN features were made
        header["noise_source"] = noise_source
    header["hash"] = _content_hash(all_ids, all_obs, all_clean, role, header)
    return Manifest(ids=all_ids, observed=all_obs, clean=all_clean, role=role, header=header,
                    transition=pairs)

