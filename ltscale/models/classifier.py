"""Fine-tuning heads: an optional projector layer, an optional feature standardisation and a
classifier (linear, τ-normalised or with learned per-class scales), described by a plain ``spec``
dict so ``head.pt`` can be rebuilt without pickled code.

A head always maps *encoder features* to logits: for ``proj_head``/``last_fc`` the pretrained
projector's first layer (Linear → BN → ReLU) is part of it.

spec::

    {"in_dim": D, "num_classes": C,
     "projector": None | {"dims": [D, P]},            # Linear(D, P, bias=False) → BN(P) → ReLU
     "standardize": bool,                             # (x − mean) / std before the classifier
     "classifier": {"kind": "linear" | "cosine" | "tau_norm" | "lws", "bias": bool,
                    "tau": float}}
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ltscale.core.errors import CheckpointError

KINDS = ("linear", "cosine", "tau_norm", "lws")


def projector_layer(in_dim: int, out_dim: int) -> nn.Sequential:
    """The first layer of a SimSiam projector (``models.heads.mlp``): Linear (no bias) → BN → ReLU;
    its state_dict keys are ``0.weight``, ``1.*`` as in the projector's own state_dict."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim),
                         nn.ReLU(inplace=True))


def pretrained_projector_layer(projector: dict) -> nn.Sequential:
    """The first Linear+BN+ReLU of a saved projector (the ``"projector"`` entry of an encoder
    file, ``models/files.py``), with its pretrained weights."""
    dims = projector["dims"]
    layer = projector_layer(dims[0], dims[1])
    state = {k: v for k, v in projector["state_dict"].items() if k.split(".")[0] in ("0", "1")}
    layer.load_state_dict(state)
    return layer


class Standardize(nn.Module):
    """(x − mean) / std with fixed statistics of the training features."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @classmethod
    def fit(cls, features: torch.Tensor) -> "Standardize":
        m = cls(features.shape[1])
        m.mean.copy_(features.mean(0))
        m.std.copy_(features.std(0).clamp_min(1e-6))
        return m

    def forward(self, x):
        return (x - self.mean) / self.std


class TauNormLinear(nn.Module):
    """Kang et al. 2020 τ-normalisation: logits x·(w_c / ||w_c||^τ), no bias. The original
    weights are kept; τ = 0 gives the unnormalised classifier without its bias."""

    def __init__(self, in_dim: int, num_classes: int, tau: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, in_dim))
        self.register_buffer("tau", torch.tensor(float(tau)))

    @classmethod
    def from_linear(cls, linear: nn.Linear, tau: float) -> "TauNormLinear":
        m = cls(linear.in_features, linear.out_features, tau)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
        return m

    def effective_weight(self) -> torch.Tensor:
        norms = self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self.weight / norms.pow(self.tau)

    def forward(self, x):
        return nn.functional.linear(x, self.effective_weight())


class CosineLinear(nn.Module):
    """Cosine classifier: logits cos(x, w_c) ∈ [−1, 1], no bias. LDAM (Cao et al. 2019) subtracts
    its margins from such logits and multiplies by a scale s, so ``ldam``/``ldam_drw`` heads use
    it (with raw linear logits a margin of 0.5 and s = 30 would mean something else)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-1, 1))

    def forward(self, x):
        return nn.functional.linear(nn.functional.normalize(x, dim=1),
                                    nn.functional.normalize(self.weight, dim=1))


class ScaledLinear(nn.Module):
    """Kang et al. 2020 LWS: a frozen linear classifier whose logits are multiplied by a learned
    scale f_c per class (weights and bias are buffers: only ``scales`` is a parameter)."""

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, in_dim))
        self.register_buffer("bias", torch.zeros(num_classes) if bias else None)
        self.scales = nn.Parameter(torch.ones(num_classes))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "ScaledLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias) * self.scales


class Head(nn.Module):
    """encoder features → [projector layer] → [standardise] → classifier → logits."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        d, c = spec["in_dim"], spec["num_classes"]
        proj = spec.get("projector")
        self.projector = projector_layer(*proj["dims"][:2]) if proj else None
        feat = proj["dims"][1] if proj else d
        self.standardize = Standardize(feat) if spec.get("standardize") else None
        cls = spec["classifier"]
        kind = cls["kind"]
        if kind == "linear":
            self.classifier = nn.Linear(feat, c, bias=cls.get("bias", True))
        elif kind == "cosine":
            self.classifier = CosineLinear(feat, c)
        elif kind == "tau_norm":
            self.classifier = TauNormLinear(feat, c, cls.get("tau", 1.0))
        elif kind == "lws":
            self.classifier = ScaledLinear(feat, c, cls.get("bias", True))
        else:
            raise CheckpointError(f"unknown classifier kind {kind!r}; known: {', '.join(KINDS)}")

    @property
    def feature_dim(self) -> int:
        """Width of the classifier's input (after the projector layer)."""
        proj = self.spec.get("projector")
        return proj["dims"][1] if proj else self.spec["in_dim"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier sees, before standardisation."""
        return x if self.projector is None else self.projector(x)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from ``features(x)``."""
        if self.standardize is not None:
            z = self.standardize(z)
        return self.classifier(z)

    def forward(self, x):
        return self.classify(self.features(x))

    def fit_standardize(self, z) -> None:
        """Set the standardisation (if the head has one) to the statistics of ``z``: cached
        features, one block per augmented copy; the first (un-augmented) block is used."""
        if self.standardize is not None:
            block = z[0] if isinstance(z, torch.Tensor) else torch.from_numpy(
                np.asarray(z[0], dtype=np.float32))
            self.standardize.load_state_dict(Standardize.fit(block.float()).state_dict())

    def with_classifier(self, classifier: nn.Module, kind: str, **extra) -> "Head":
        """A copy of this head with another classifier (same projector and standardisation)."""
        spec = copy.deepcopy(self.spec)
        spec["classifier"] = {"kind": kind, "bias": getattr(classifier, "bias", None) is not None,
                              **extra}
        head = Head(spec)
        if self.projector is not None:
            head.projector.load_state_dict(self.projector.state_dict())
        if self.standardize is not None:
            head.standardize.load_state_dict(self.standardize.state_dict())
        head.classifier.load_state_dict(classifier.state_dict())
        return head


class ClassifierPart(nn.Module):
    """The part of a head after its projector layer (standardisation + classifier): trains or
    applies the classifier on features the projector layer has already produced."""

    def __init__(self, head: Head):
        super().__init__()
        self.head = head

    def forward(self, z):
        return self.head.classify(z)


def head_spec(in_dim: int, num_classes: int, *, projector_dims: list[int] | None = None,
              standardize: bool = True, kind: str = "linear", bias: bool = True,
              tau: float | None = None) -> dict:
    cls = {"kind": kind, "bias": bias}
    if tau is not None:
        cls["tau"] = float(tau)
    return {"in_dim": int(in_dim), "num_classes": int(num_classes),
            "projector": {"dims": [int(projector_dims[0]), int(projector_dims[1])]}
            if projector_dims else None,
            "standardize": bool(standardize), "classifier": cls}


def new_head(in_dim: int, num_classes: int, mode: str, *, projector: dict | None = None,
             kind: str = "linear", seed: int = 0) -> Head:
    """A freshly initialised head for fine-tuning mode ``mode`` on ``in_dim`` encoder features:
    ``proj_head`` / ``last_fc`` start from the pretrained projector's first layer (``projector``,
    as the encoder file holds it), ``linear`` and ``last_fc`` standardise the classifier's input;
    ``kind`` is the classifier the loss assumes (``cosine`` for LDAM). Seeded with ``seed``."""
    torch.manual_seed(seed)
    if mode in ("proj_head", "last_fc"):
        spec = head_spec(in_dim, num_classes, projector_dims=projector["dims"][:2],
                         standardize=mode == "last_fc", kind=kind, bias=kind == "linear")
    else:
        spec = head_spec(in_dim, num_classes, standardize=mode == "linear", kind=kind,
                         bias=kind == "linear")
    head = Head(spec)
    if head.projector is not None:
        head.projector.load_state_dict(pretrained_projector_layer(projector).state_dict())
    if mode != "proj_head" and kind == "linear":
        with torch.no_grad():
            head.classifier.weight.normal_(0, 0.01)
            head.classifier.bias.zero_()
    return head


def build_head(spec: dict, state_dict: dict | None = None) -> Head:
    head = Head(spec)
    if state_dict is not None:
        missing, unexpected = head.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"head weights do not fit its description {spec} (missing "
                                  f"{missing[:3]}, unexpected {unexpected[:3]})")
    return head


def classifier_as_head(classifier: nn.Module, in_dim: int, num_classes: int, kind: str) -> Head:
    """The classifier of a network trained end to end (``kind``: linear, or cosine for the LDAM
    losses) as a head on raw encoder features, so that it is written and read as every head."""
    head = Head(head_spec(in_dim, num_classes, standardize=False, kind=kind, bias=kind == "linear"))
    head.classifier.load_state_dict(classifier.state_dict())
    return head


class EncoderHead(nn.Module):
    """A fine-tuned model as one module: ``logits(x) = head(encoder(x))``."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def logits(self, x):
        return self.head(self.encoder(x))

    forward = logits
