"""Fine-tuning losses by name: ``classification_loss(name, counts, **options)`` returns a
``ClassificationLoss`` module mapping (logits, targets) to a per-sample loss.

| name | loss | options (defaults) |
|---|---|---|
| ``ce`` | cross-entropy | — |
| ``la`` | logit-adjusted CE (Menon et al.; seed 000 eq. 2) | tau=1.0 |
| ``sl`` | SuperLoss over CE (seed 000 eq. 3–4) | lam=4.0, tau_sl=None (log C) / "mean" / float |
| ``la_sl`` | SuperLoss over logit-adjusted CE (seed 000) | tau=1.0, lam=4.0, tau_sl=None |
| ``balanced_softmax`` | CE on z + log n_c (Ren et al. 2020) | — |
| ``focal`` | focal loss (Lin et al. 2017) | gamma=1.0 |
| ``cb`` | class-balanced CE (Cui et al. 2019) | beta=0.9999 |
| ``cb_focal`` | class-balanced focal loss | beta=0.9999, gamma=1.0 |
| ``drw`` | CE, class-balanced from epoch drw_start·epochs on (Cao et al. 2019) | drw_start=0.8, drw_beta=0.9999 |
| ``ldam`` | LDAM (Cao et al. 2019) | max_margin=0.5, scale=30.0 |
| ``ldam_drw`` | LDAM with the DRW schedule | max_margin, scale, drw_start, drw_beta |

``counts`` are the training class counts of the observed labels. DRW switches its weights on
through ``set_epoch(epoch, epochs)`` (``epoch`` 0-based): at epoch ⌈drw_start·epochs⌉, i.e. 160 of
200 with the default, as in Cao et al. All derived tensors are non-persistent buffers: they follow
``.to(device)`` but do not enter a ``state_dict``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ltscale.errors import RecipeError
from ltscale.losses import classification as C

_SL = {"lam": 4.0, "tau_sl": None}
_DRW = {"drw_start": 0.8, "drw_beta": 0.9999}
_LDAM = {"max_margin": 0.5, "scale": 30.0}

# name → accepted options with their defaults (seed 000: τ = 1, λ = 4, τ_SL = log C)
_DEFAULTS: dict[str, dict] = {
    "ce": {},
    "la": {"tau": 1.0},
    "sl": dict(_SL),
    "la_sl": {"tau": 1.0, **_SL},
    "balanced_softmax": {},
    "focal": {"gamma": 1.0},
    "cb": {"beta": 0.9999},
    "cb_focal": {"beta": 0.9999, "gamma": 1.0},
    "drw": dict(_DRW),
    "ldam": dict(_LDAM),
    "ldam_drw": {**_LDAM, **_DRW},
}

SUPERLOSS_MOMENTUM = 0.9  # running-mean τ_SL (tau_sl="mean")


def loss_names() -> list[str]:
    return list(_DEFAULTS)


def loss_defaults(name: str) -> dict:
    """The options ``name`` accepts, with their defaults."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def _check_name(name: str) -> None:
    if name not in _DEFAULTS:
        raise RecipeError(f"unknown loss {name!r}; known losses: {', '.join(_DEFAULTS)}")


def _number(name: str, key: str, value, *, low=None, high=None, low_open=False,
            high_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RecipeError(f"loss {name!r}: option {key} must be a finite number, got {value!r}")
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>' if low_open else '≥'} {low}"
        hi = "" if high is None else f"{'<' if high_open else '≤'} {high}"
        raise RecipeError(f"loss {name!r}: option {key} must be {' and '.join(filter(None, [lo, hi]))}, "
                          f"got {value}")
    return value


def _validate(name: str, options: dict) -> dict:
    _check_name(name)
    accepted = _DEFAULTS[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it accepts: {', '.join(accepted)}" if accepted else "it takes no options"
        raise RecipeError(f"loss {name!r} does not take option(s) {', '.join(unknown)}; {takes}")
    opts = {**accepted, **options}
    for key, value in opts.items():
        if key == "tau":
            opts[key] = _number(name, key, value)
        elif key == "lam":
            opts[key] = _number(name, key, value, low=0.0, low_open=True)
        elif key == "tau_sl":
            if value is not None and value != "mean":
                if isinstance(value, str):
                    raise RecipeError(f"loss {name!r}: option tau_sl must be a number, 'mean' or "
                                      f"None (log C), got {value!r}")
                opts[key] = _number(name, key, value)
        elif key == "gamma":
            opts[key] = _number(name, key, value, low=0.0)
        elif key in ("beta", "drw_beta"):
            opts[key] = _number(name, key, value, low=0.0, high=1.0, high_open=True)
        elif key in ("max_margin", "scale"):
            opts[key] = _number(name, key, value, low=0.0, low_open=True)
        elif key == "drw_start":
            opts[key] = _number(name, key, value, low=0.0, high=1.0)
    return opts


class ClassificationLoss(nn.Module):
    """name + class counts (+ options) → per-sample loss(logits, targets).

    ``confidence`` holds the last batch's SuperLoss σ* per sample (detached) for ``sl``/``la_sl``
    and is None for the other losses."""

    def __init__(self, name: str, counts, **options):
        super().__init__()
        self.options = _validate(name, options)
        self.name = name
        n = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if n.numel() == 0 or (n < 0).any() or n.sum() <= 0:
            raise RecipeError(f"loss {name!r}: class counts must be non-negative with a positive "
                              f"total, got {n.tolist()}")
        self.num_classes = n.numel()
        clamped = n.clamp_min(1)  # an empty class gets one pseudo-sample in the prior (no log 0)
        self.register_buffer("counts", n.float(), persistent=False)
        self.register_buffer("log_prior", (clamped / clamped.sum()).log().float(), persistent=False)
        o = self.options
        weights_beta = o.get("beta", o.get("drw_beta"))
        self.register_buffer("class_balanced", None if weights_beta is None else
                             C.class_balanced_weights(n, weights_beta), persistent=False)
        self.register_buffer("margins", C.ldam_margins(n, o["max_margin"])
                             if "max_margin" in o else None, persistent=False)
        self.uses_drw = "drw_start" in o
        self.weights_on = name in ("cb", "cb_focal")  # DRW losses start without weights
        self.running_tau = C.RunningMean(SUPERLOSS_MOMENTUM) if o.get("tau_sl") == "mean" else None
        self.confidence: torch.Tensor | None = None

    def drw_epoch(self, epochs: int) -> int | None:
        """The first (0-based) epoch with class-balanced weights, or None without DRW."""
        if not self.uses_drw:
            return None
        return math.ceil(self.options["drw_start"] * epochs - 1e-9)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of each epoch (0-based); DRW switches its weights on at
        ``drw_epoch(epochs)``. A no-op for losses without a schedule."""
        if self.uses_drw:
            self.weights_on = epoch >= self.drw_epoch(epochs)

    @property
    def class_weights(self) -> torch.Tensor | None:
        """The per-class weights currently applied (None: unweighted)."""
        return self.class_balanced if self.weights_on else None

    def _superloss(self, base: torch.Tensor) -> torch.Tensor:
        tau_sl = self.options["tau_sl"]
        if tau_sl is None:
            tau = math.log(self.num_classes)
        elif tau_sl == "mean":
            if self.training or self.running_tau.value is None:
                self.running_tau.update(base.detach().mean())
            tau = self.running_tau.value
        else:
            tau = tau_sl
        lam = self.options["lam"]
        self.confidence = C.superloss_confidence(base, tau, lam).detach()
        return (base - tau) * self.confidence + lam * torch.log(self.confidence) ** 2

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"loss {self.name!r}: expected logits of shape (B, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        name, o = self.name, self.options
        if name == "ce":
            return C.cross_entropy(logits, targets)
        if name == "la":
            return C.logit_adjusted_loss(logits, targets, self.log_prior, o["tau"])
        if name == "sl":
            return self._superloss(C.cross_entropy(logits, targets))
        if name == "la_sl":
            return self._superloss(C.logit_adjusted_loss(logits, targets, self.log_prior, o["tau"]))
        if name == "balanced_softmax":
            return C.balanced_softmax_loss(logits, targets, self.counts)
        if name in ("focal", "cb_focal"):
            return C.focal_loss(logits, targets, o["gamma"], self.class_weights)
        if name in ("cb", "drw"):
            w = self.class_weights
            return C.cross_entropy(logits, targets) if w is None else \
                C.weighted_cross_entropy(logits, targets, w)
        if name in ("ldam", "ldam_drw"):
            return C.ldam_loss(logits, targets, self.margins, o["scale"], self.class_weights)
        raise AssertionError(name)  # every registered name is handled above

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name!r}, classes={self.num_classes}" + (f", {opts}" if opts else "")


def classification_loss(name: str, counts, **options) -> ClassificationLoss:
    return ClassificationLoss(name, counts, **options)
