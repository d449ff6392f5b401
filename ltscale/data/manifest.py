"""Manifests: an experimental condition (imbalance, label noise, seed) as a tiny file over an index.

A manifest selects sample ids from one split of a shard index and gives each an observed label
(possibly noisy) beside its clean label. Building one never reads image bytes and is
deterministic in (index, spec, seed). The header records the spec, the resulting class counts and
noise rate, the index hash it was built from, and a content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ltscale.atomic import atomic_path
from ltscale.data.index import ShardIndex
from ltscale.errors import ManifestError

ROLES = ["labeled"]


@dataclass(frozen=True)
class ImbalanceSpec:
    profile: str = "none"   # none | exp | step
    ratio: float = 1.0      # γ = n_max / n_min

    @classmethod
    def parse(cls, text: str) -> "ImbalanceSpec":
        """``none``, ``exp:100`` or ``step:10``."""
        if text in ("none", "", None):
            return cls()
        profile, _, value = str(text).partition(":")
        try:
            ratio = float(value)
        except ValueError:
            ratio = float("nan")
        if profile not in ("exp", "step") or not ratio >= 1:
            raise ManifestError(f"imbalance {text!r} not understood: use none, exp:GAMMA or "
                                "step:GAMMA with GAMMA >= 1 (e.g. exp:100)")
        return cls(profile, ratio)


@dataclass(frozen=True)
class NoiseSpec:
    kind: str = "none"  # none | sym
    rate: float = 0.0   # fraction of samples whose label is redrawn uniformly over all classes

    @classmethod
    def parse(cls, text: str) -> "NoiseSpec":
        """``none`` or ``sym:0.4``: 40 % of labels redrawn uniformly (the true class may come back)."""
        if text in ("none", "", None):
            return cls()
        kind, _, value = str(text).partition(":")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if kind != "sym" or not 0 <= rate <= 1:
            raise ManifestError(f"noise {text!r} not understood: use none or sym:RATE with "
                                "0 <= RATE <= 1 (e.g. sym:0.4)")
        return cls(kind, rate)


@dataclass(frozen=True)
class ManifestSpec:
    split: str = "train"
    imbalance: ImbalanceSpec = field(default_factory=ImbalanceSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    seed: int = 0
    max_per_class: int | None = None  # n_max; default: the smallest class size of the split

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestSpec":
        return cls(split=d["split"], imbalance=ImbalanceSpec(**d["imbalance"]),
                   noise=NoiseSpec(**d["noise"]), seed=int(d["seed"]),
                   max_per_class=d.get("max_per_class"))


def longtail_counts(n_max: int, num_classes: int, imbalance: ImbalanceSpec) -> list[int]:
    """Per-class sample counts. exp (CIFAR-LT): n_i = floor(n_max * γ^(-i/(C-1)));
    step: the first half of the classes keep n_max, the rest get floor(n_max / γ)."""
    if imbalance.profile == "none" or num_classes == 1:
        return [n_max] * num_classes
    if imbalance.profile == "exp":
        return [int(math.floor(n_max * imbalance.ratio ** (-i / (num_classes - 1))))
                for i in range(num_classes)]
    n_min = int(math.floor(n_max / imbalance.ratio))
    return [n_max if i < num_classes // 2 else n_min for i in range(num_classes)]


@dataclass
class Manifest:
    ids: np.ndarray       # int64 rows of the index
    observed: np.ndarray  # int64 labels the learner sees
    clean: np.ndarray     # int64 true labels
    role: np.ndarray      # int8, into ROLES
    header: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return int(self.header["num_classes"])

    @property
    def hash(self) -> str:
        return self.header["hash"]

    def class_counts(self, labels: str = "observed") -> np.ndarray:
        return np.bincount(getattr(self, labels), minlength=self.num_classes)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=self.ids, observed=self.observed, clean=self.clean,
                         role=self.role, header=np.array(json.dumps(self.header, sort_keys=True)))

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"manifest not found: {path}; make one with `ltscale manifest make`")
        try:
            with np.load(path, allow_pickle=False) as z:
                m = cls(ids=z["ids"], observed=z["observed"], clean=z["clean"], role=z["role"],
                        header=json.loads(str(z["header"])))
        except (OSError, ValueError, KeyError) as exc:
            raise ManifestError(f"{path}: not a readable ltscale manifest ({exc})") from None
        if _content_hash(m.ids, m.observed, m.clean, m.role, m.header) != m.header.get("hash"):
            raise ManifestError(f"{path}: content does not match its recorded hash; the file was "
                                "modified or corrupted. Rebuild it with `ltscale manifest make`.")
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


def _content_hash(ids, observed, clean, role, header) -> str:
    h = hashlib.sha256()
    for arr in (ids, observed, clean, role):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps({"spec": header["spec"], "index_hash": header["index_hash"]},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def build_manifest(index: ShardIndex, spec: ManifestSpec) -> Manifest:
    """Select the spec's imbalanced subset of ``spec.split``, then apply label noise to it."""
    split_ids = index.split_ids(spec.split)
    labels = index.label[split_ids]
    num_classes = index.num_classes
    available = np.bincount(labels, minlength=num_classes)
    n_max = spec.max_per_class or int(available.min())
    wanted = longtail_counts(n_max, num_classes, spec.imbalance)
    short = [(c, w, int(a)) for c, (w, a) in enumerate(zip(wanted, available)) if w > a]
    if short:
        c, w, a = short[0]
        raise ManifestError(f"class {c} ({index.classes[c]}) needs {w} samples for this "
                            f"imbalance profile but split {spec.split!r} has only {a}; lower "
                            "max_per_class")

    rng_select = np.random.default_rng([spec.seed, 0])
    rng_noise = np.random.default_rng([spec.seed, 1])
    chosen = []
    for c in range(num_classes):
        members = split_ids[labels == c]
        chosen.append(np.sort(rng_select.choice(members, size=wanted[c], replace=False)))
    ids = np.concatenate(chosen).astype(np.int64)
    clean = index.label[ids].astype(np.int64)
    observed = clean.copy()
    if spec.noise.kind == "sym" and spec.noise.rate > 0:
        flip = rng_noise.choice(len(ids), size=int(round(spec.noise.rate * len(ids))), replace=False)
        observed[flip] = rng_noise.integers(0, num_classes, size=len(flip))
    role = np.zeros(len(ids), dtype=np.int8)

    counts = np.bincount(observed, minlength=num_classes)
    clean_counts = np.bincount(clean, minlength=num_classes)
    header = {
        "spec": spec.to_dict(),
        "index_hash": index.content_hash(),
        "dataset": str(index.root) if index.root else None,
        "num_classes": num_classes,
        "classes": index.classes,
        "roles": ROLES,
        "samples": int(len(ids)),
        "class_counts": counts.tolist(),
        "clean_class_counts": clean_counts.tolist(),
        "noise_rate": float((observed != clean).mean()) if len(ids) else 0.0,
        "imbalance_ratio": float(clean_counts.max() / max(clean_counts.min(), 1)),
    }
    header["hash"] = _content_hash(ids, observed, clean, role, header)
    return Manifest(ids=ids, observed=observed, clean=clean, role=role, header=header)


def manifest_stats(m: Manifest) -> dict:
    """Summary figures of a manifest, for `ltscale manifest stats` and run tags."""
    noisy = m.observed != m.clean
    per_class_noise = [float(noisy[m.clean == c].mean()) if (m.clean == c).any() else 0.0
                       for c in range(m.num_classes)]
    return {
        "hash": m.hash,
        "index_hash": m.header["index_hash"],
        "spec": m.header["spec"],
        "samples": len(m),
        "num_classes": m.num_classes,
        "class_counts_observed": m.class_counts("observed").tolist(),
        "class_counts_clean": m.class_counts("clean").tolist(),
        "imbalance_ratio": m.header["imbalance_ratio"],
        "noise_rate": float(noisy.mean()) if len(m) else 0.0,
        "noise_rate_per_class": per_class_noise,
    }
