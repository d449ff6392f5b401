"""Synthetic label noise over clean labels, and the transition matrix it realises.

- symmetric, ``all``: round(ν·N) samples, chosen uniformly, get a label drawn uniformly from all C
  classes (seed 000's convention; the true class comes back with probability 1/C, so the
  expected flip rate is ν(C−1)/C and T = (1−ν)·I + ν/C);
- symmetric, ``others``: the same samples get a label drawn from the C−1 other classes (flip rate
  exactly ν, T = (1−ν)·I + ν/(C−1) off the diagonal);
- asymmetric: in every class i of the mapping, round(ν·n_i) of its samples move to m(i)
  (T[i, m(i)] = ν); classes outside the mapping keep their labels;
- real: the source's own noisy labels; human: CIFAR-N annotations (``noise_human``); idn:
  instance-dependent noise from the images (``noise_idn``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ltscale.core.errors import ManifestError
from ltscale.data.index import ShardIndex
from ltscale.data.manifest_spec import NoiseSpec
from ltscale.data.noise_human import human_labels
from ltscale.data.noise_idn import instance_dependent_labels

# CIFAR-10 class-dependent flips used across the noisy-label literature
CIFAR10_ASYM = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog",
                "dog": "cat"}


def class_mapping(spec: NoiseSpec, index: ShardIndex) -> dict[int, int]:
    """The asymmetric mapping as class indices, checked against the index's classes."""
    names = {n: i for i, n in enumerate(index.classes)}
    if spec.mapping == "cifar100":
        return _next_in_superclass(index)
    if spec.mapping == "cifar10":
        by_name, where = CIFAR10_ASYM, "the cifar10 mapping"
    else:
        path = Path(spec.mapping)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"noise mapping file not found: {path} (use cifar10, cifar100 "
                                "or a JSON file of class names)") from None
        except ValueError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ManifestError(f"{path}: the mapping must be a JSON object "
                                '{"source class": "target class", ...}')
        by_name, where = raw, str(path)
    out = {}
    for src, dst in by_name.items():
        for name in (src, dst):
            if name not in names:
                raise ManifestError(f"{where} names class {name!r}, which this dataset does not "
                                    f"have (classes: {', '.join(index.classes[:12])}"
                                    f"{' ...' if len(index.classes) > 12 else ''})")
        out[names[src]] = names[dst]
    return out


def _next_in_superclass(index: ShardIndex) -> dict[int, int]:
    if "coarse_label" not in index.extra_classes:
        raise ManifestError("the cifar100 noise mapping needs superclass labels (a coarse_label "
                            "column, as the cifar100 source writes); this index has none")
    fine, coarse = index.label, index.extra("coarse_label")
    known = (fine >= 0) & (coarse >= 0)
    pairs = np.unique(np.stack([fine[known], coarse[known]], 1), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise ManifestError("a fine class belongs to more than one superclass in this index")
    out = {}
    for c in np.unique(pairs[:, 1]):
        members = np.sort(pairs[pairs[:, 1] == c, 0])
        for k, f in enumerate(members):
            out[int(f)] = int(members[(k + 1) % len(members)])
    return out


def apply_noise(clean: np.ndarray, spec: NoiseSpec, index: ShardIndex,
                rng: np.random.Generator) -> np.ndarray:
    """Observed labels for samples whose clean labels are ``clean`` (all known, >= 0)."""
    observed = clean.copy()
    C = index.num_classes
    if spec.kind == "sym" and spec.rate > 0 and len(clean):
        flip = rng.choice(len(clean), size=int(round(spec.rate * len(clean))), replace=False)
        if spec.convention == "all":
            observed[flip] = rng.integers(0, C, size=len(flip))
        else:  # a draw over the C-1 other classes: skip over the true one
            draw = rng.integers(0, C - 1, size=len(flip))
            observed[flip] = draw + (draw >= clean[flip])
    elif spec.kind == "asym" and spec.rate > 0:
        for src, dst in sorted(class_mapping(spec, index).items()):
            members = np.flatnonzero(clean == src)
            moved = rng.choice(members, size=int(round(spec.rate * len(members))), replace=False)
            observed[moved] = dst
    return observed


def observe(index: ShardIndex, noise: NoiseSpec, seed: int, ids: np.ndarray, clean: np.ndarray,
            selected_on: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """Observed labels of the labeled samples ``ids`` (clean labels ``clean``, selected on the
    labels ``selected_on``) and, for noise read from a file or made from the images, a record of
    where it came from for the manifest header."""
    if noise.kind == "real":
        return selected_on.astype(np.int64), None
    if noise.kind == "human":
        return human_labels(index, noise, ids)
    if noise.kind == "idn":
        return instance_dependent_labels(index, noise, seed, ids, clean)
    return apply_noise(clean, noise, index, np.random.default_rng([seed, 1])), None


def describe(noise: NoiseSpec) -> str:
    """One line on the noise convention, for the manifest header and stats."""
    if noise.kind == "sym":
        return ("symmetric: labels redrawn uniformly over all classes (the true class may come "
                "back)" if noise.convention == "all" else
                "symmetric: labels redrawn uniformly over the other classes")
    if noise.kind == "asym":
        return f"asymmetric: mapped classes moved to their targets ({noise.mapping})"
    if noise.kind == "real":
        return "real: the source's noisy labels; clean labels where the source has them"
    if noise.kind == "human":
        return f"human: CIFAR-N {noise.label_set} labels from {noise.file}"
    if noise.kind == "idn":
        return (f"instance-dependent (Xia et al. 2020): flip rates ~ N({noise.rate:g}, "
                f"{noise.std:g}^2) on [0, 1], targets by softmax(x W_y) over the other classes")
    return "none"


def transition_counts(clean: np.ndarray, observed: np.ndarray, num_classes: int) -> np.ndarray:
    """(clean, observed, count) rows for every pair that occurs, samples with a known clean and
    observed label only. Sparse, so it stays small for thousands of classes."""
    known = (clean >= 0) & (observed >= 0)
    pair = clean[known].astype(np.int64) * num_classes + observed[known]
    values, counts = np.unique(pair, return_counts=True)
    return np.stack([values // num_classes, values % num_classes, counts], 1).astype(np.int64)


def transition_matrix(pairs: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised T[i, j] = P(observed j | clean i) from ``transition_counts``."""
    t = np.zeros((num_classes, num_classes))
    if len(pairs):
        np.add.at(t, (pairs[:, 0], pairs[:, 1]), pairs[:, 2])
    rows = t.sum(1, keepdims=True)
    return np.divide(t, rows, out=np.zeros_like(t), where=rows > 0)
