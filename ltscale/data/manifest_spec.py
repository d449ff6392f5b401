"""What a manifest asks for: the imbalance profile, the label noise, the unlabeled pool, few-label
subsets and balanced val/test selections — each parsed from a short text form and validated.

Text forms (CLI flags and recipe keys use the same strings):

- imbalance: ``none`` (every class cut to the smallest class), ``natural`` (the split as given),
  ``exp:GAMMA`` (CIFAR-LT), ``step:GAMMA[:MU]`` (a fraction MU of the classes, default 0.5, cut to
  n_max/GAMMA), ``pareto:GAMMA[:ALPHA]`` (ImageNet-LT-like, shape ALPHA, default 6);
- noise: ``none``; ``sym:RATE[:all|others]`` — RATE of the labels redrawn uniformly over all
  classes (``all``, the default, so the true class can come back and the realised flip rate is
  RATE·(C−1)/C) or over the other classes only (``others``, realised rate RATE);
  ``asym:RATE:MAPPING`` — RATE of each mapped class moved to its target, MAPPING ``cifar10``,
  ``cifar100`` (next class in the same superclass) or a JSON file {"source": "target", ...} of
  class names; ``real`` — the source's own noisy labels (Clothing1M);
  ``human:LABEL_SET:FILE`` — CIFAR-10N / CIFAR-100N human annotations (Wei et al. 2022) from
  their ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` file (or an .npz with the same keys),
  LABEL_SET one of aggre, worse, random1, random2, random3 (CIFAR-10N), noisy (CIFAR-100N) or
  clean; ``idn:RATE[:STD]`` — instance-dependent (part-dependent) noise of Xia et al. 2020 from
  the images' pixels, per-sample flip rates drawn from N(RATE, STD²) truncated to [0, 1]
  (STD 0.1 by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ltscale.core.errors import ManifestError

IMBALANCE_PROFILES = ("none", "natural", "exp", "step", "pareto")
NOISE_KINDS = ("none", "sym", "asym", "real", "human", "idn")
# label_set name → key of the CIFAR-N file (``worst`` as the CIFAR-N repository's scripts spell it)
HUMAN_LABEL_SETS = {"aggre": "aggre_label", "worse": "worse_label", "worst": "worse_label",
                    "random1": "random_label1", "random2": "random_label2",
                    "random3": "random_label3", "noisy": "noisy_label", "clean": "clean_label"}
# fields added after the first manifests were written: left out of the recorded spec while at
# their defaults, so that the spec (and the content hash) of an older kind of noise is unchanged
_NEW_NOISE_FIELDS = {"file": "", "label_set": "", "std": 0.1}


def _number(text: str, what: str, full: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ManifestError(f"{what} {full!r}: {text!r} is not a number") from None


@dataclass(frozen=True)
class ImbalanceSpec:
    profile: str = "none"
    ratio: float = 1.0      # γ = n_max / n_min
    mu: float = 0.5         # step: fraction of classes reduced
    alpha: float = 6.0      # pareto: shape
    order: str = "index"    # which classes are the head: by class index, or a seeded permutation

    def __post_init__(self):
        if self.profile not in IMBALANCE_PROFILES:
            raise ManifestError(f"imbalance profile {self.profile!r} unknown; use one of "
                                f"{', '.join(IMBALANCE_PROFILES)}")
        if not self.ratio >= 1:
            raise ManifestError(f"imbalance ratio γ must be >= 1, got {self.ratio}")
        if not 0 < self.mu <= 1:
            raise ManifestError(f"step imbalance: the reduced fraction μ must be in (0, 1], "
                                f"got {self.mu}")
        if not self.alpha > 0:
            raise ManifestError(f"pareto imbalance: shape α must be > 0, got {self.alpha}")
        if self.order not in ("index", "perm"):
            raise ManifestError(f"class order {self.order!r}: use index or perm")

    @classmethod
    def parse(cls, text: str | None, order: str = "index") -> "ImbalanceSpec":
        text = (text or "none").strip()
        profile, *values = text.split(":")
        if profile in ("none", "natural"):
            if values:
                raise ManifestError(f"imbalance {text!r}: {profile} takes no value")
            return cls(profile, order=order)
        if profile not in ("exp", "step", "pareto") or not 1 <= len(values) <= 2 or (
                profile == "exp" and len(values) != 1):
            raise ManifestError(f"imbalance {text!r} not understood: use none, natural, "
                                "exp:GAMMA, step:GAMMA[:MU] or pareto:GAMMA[:ALPHA] "
                                "(e.g. exp:100)")
        nums = [_number(v, "imbalance", text) for v in values]
        extra = {"step": "mu", "pareto": "alpha"}.get(profile)
        kwargs = {extra: nums[1]} if len(nums) == 2 else {}
        return cls(profile, nums[0], order=order, **kwargs)


@dataclass(frozen=True)
class NoiseSpec:
    kind: str = "none"
    rate: float = 0.0
    convention: str = "all"   # sym: redraw over all classes or over the other classes only
    mapping: str = ""         # asym: cifar10 | cifar100 | path of a JSON class-name mapping
    file: str = ""            # human: the CIFAR-N label file
    label_set: str = ""       # human: which of its label sets (a HUMAN_LABEL_SETS name)
    std: float = 0.1          # idn: spread of the per-sample flip rates around ``rate``

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ManifestError(f"noise kind {self.kind!r} unknown; use one of "
                                f"{', '.join(NOISE_KINDS)}")
        if not 0 <= self.rate <= 1:
            raise ManifestError(f"noise rate must be in [0, 1], got {self.rate}")
        if self.convention not in ("all", "others"):
            raise ManifestError(f"symmetric noise convention {self.convention!r}: use all "
                                "(the true class may be drawn again) or others")
        if self.kind == "asym" and not self.mapping:
            raise ManifestError("asymmetric noise needs a mapping: cifar10, cifar100 or a JSON file")
        if self.kind == "human":
            if not self.file:
                raise ManifestError("human noise needs the CIFAR-N label file "
                                    "(human:LABEL_SET:FILE, e.g. human:aggre:CIFAR-10_human.pt)")
            if self.label_set not in HUMAN_LABEL_SETS:
                raise ManifestError(f"human noise label set {self.label_set!r} unknown; use one of "
                                    f"{', '.join(HUMAN_LABEL_SETS)}")
        if not 0 < self.std <= 1:
            raise ManifestError(f"instance-dependent noise: the flip-rate spread must be in "
                                f"(0, 1], got {self.std}")

    def fields(self) -> dict:
        """The recorded form: the fields of this spec, less new ones at their defaults."""
        d = asdict(self)
        return {k: v for k, v in d.items() if _NEW_NOISE_FIELDS.get(k, object()) != v}

    def text(self) -> str:
        """The text form ``parse`` reads back into this spec."""
        num = lambda x: str(int(x)) if float(x).is_integer() else repr(float(x))  # noqa: E731
        if self.kind == "sym":
            return f"sym:{num(self.rate)}" + (":others" if self.convention == "others" else "")
        if self.kind == "asym":
            return f"asym:{num(self.rate)}:{self.mapping}"
        if self.kind == "human":
            return f"human:{self.label_set}:{self.file}"
        if self.kind == "idn":
            return f"idn:{num(self.rate)}" + (f":{num(self.std)}" if self.std != 0.1 else "")
        return self.kind

    @classmethod
    def text_of(cls, value: str | dict) -> str:
        """The text form of a recipe's ``noise`` value: a string as it is, a mapping such as
        ``{kind: human, file: F, label_set: aggre}`` as the text of that spec."""
        if isinstance(value, str):
            return value
        try:
            return cls(**value).text()
        except TypeError:
            raise ManifestError(f"noise {value}: a mapping takes kind and the fields of that "
                                "kind (rate, convention, mapping, file, label_set, std)") from None

    @classmethod
    def parse(cls, text: str | None) -> "NoiseSpec":
        text = (text or "none").strip()
        kind, *values = text.split(":")
        if kind in ("none", "real") and not values:
            return cls(kind)
        usage = ("use none, sym:RATE[:all|others], asym:RATE:cifar10|cifar100|MAPPING.json, "
                 "real, human:LABEL_SET:FILE or idn:RATE[:STD] (e.g. sym:0.4)")
        if kind == "sym" and 1 <= len(values) <= 2:
            conv = values[1] if len(values) == 2 else "all"
            return cls("sym", _number(values[0], "noise", text), convention=conv)
        if kind == "asym" and len(values) >= 2:
            return cls("asym", _number(values[0], "noise", text), mapping=":".join(values[1:]))
        if kind == "human" and len(values) >= 2:
            return cls("human", label_set=values[0], file=":".join(values[1:]))
        if kind == "idn" and 1 <= len(values) <= 2:
            std = _number(values[1], "noise", text) if len(values) == 2 else 0.1
            return cls("idn", _number(values[0], "noise", text), std=std)
        raise ManifestError(f"noise {text!r} not understood: {usage}")


@dataclass(frozen=True)
class UnlabeledSpec:
    """An unlabeled pool D_U beside the labeled set (seeds 001/002)."""

    multiple: float = 0.0       # |D_U| = multiple × |labeled set|; 0 = no pool
    ratio: float = 1.0          # ρ_U, the pool's own exp imbalance over the same class order
    relevance: float = 1.0      # share of the pool drawn from in-distribution classes
    ood_split: str | None = None  # split of the same index that supplies the irrelevant share
    split: str | None = None    # where in-distribution pool images come from (default: the
                                # labeled split, never reusing a labeled sample)

    def __post_init__(self):
        if self.multiple < 0:
            raise ManifestError(f"unlabeled multiple must be >= 0, got {self.multiple}")
        if not self.ratio >= 1:
            raise ManifestError(f"unlabeled imbalance ρ_U must be >= 1, got {self.ratio}")
        if not 0 <= self.relevance <= 1:
            raise ManifestError(f"relevance ratio must be in [0, 1], got {self.relevance}")
        if self.multiple and self.relevance < 1 and not self.ood_split:
            raise ManifestError("a relevance ratio below 1 needs ood_split: the split that "
                                "supplies the out-of-distribution images")


@dataclass(frozen=True)
class EvalSelection:
    """A balanced val or test selection: ``per_class`` samples of each class of ``split``
    (default: as many as the smallest class has)."""

    split: str
    per_class: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "EvalSelection | None":
        if not text:
            return None
        split, _, n = str(text).partition(":")
        if (n and not n.isdigit()) or not split:
            raise ManifestError(f"selection {text!r}: use SPLIT or SPLIT:PER_CLASS (e.g. test:100)")
        if n and int(n) < 1:
            raise ManifestError(f"selection {text!r}: PER_CLASS must be at least 1")
        return cls(split, int(n) if n else None)


@dataclass(frozen=True)
class ManifestSpec:
    split: str = "train"
    imbalance: ImbalanceSpec = field(default_factory=ImbalanceSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    seed: int = 0
    max_per_class: int | None = None  # n_max; default: the smallest class size of the split
    few_labels: float | None = None   # keep this fraction of labels per class (at least one)
    unlabeled: UnlabeledSpec = field(default_factory=UnlabeledSpec)
    val: EvalSelection | None = None
    test: EvalSelection | None = None

    def __post_init__(self):
        if self.few_labels is not None and not 0 < self.few_labels <= 1:
            raise ManifestError(f"few_labels must be a fraction in (0, 1], got {self.few_labels}")
        if not 0 <= self.seed < 2**32:
            raise ManifestError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ManifestError(f"max_per_class must be >= 1, got {self.max_per_class}")

    def to_dict(self) -> dict:
        return {**asdict(self), "noise": self.noise.fields()}

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestSpec":
        sel = lambda v: EvalSelection(**v) if v else None  # noqa: E731
        return cls(split=d["split"], imbalance=ImbalanceSpec(**d["imbalance"]),
                   noise=NoiseSpec(**d["noise"]), seed=int(d["seed"]),
                   max_per_class=d.get("max_per_class"), few_labels=d.get("few_labels"),
                   unlabeled=UnlabeledSpec(**d.get("unlabeled", {})),
                   val=sel(d.get("val")), test=sel(d.get("test")))
