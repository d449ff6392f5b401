"""Classification losses by name, with a uniform signature (logits, targets, log_prior) → per-sample."""

from __future__ import annotations

import functools
import math

from ltscale.losses import classification as C


def _ce(logits, targets, log_prior):
    return C.cross_entropy(logits, targets)


def _la(logits, targets, log_prior, tau: float = 1.0):
    return C.logit_adjusted_loss(logits, targets, log_prior, tau)


def _sl(logits, targets, log_prior, lam: float = 4.0, tau_sl: float | None = None):
    tau_sl = math.log(logits.shape[1]) if tau_sl is None else tau_sl
    return C.superloss(C.cross_entropy(logits, targets), tau_sl, lam)


def _la_sl(logits, targets, log_prior, tau: float = 1.0, lam: float = 4.0,
           tau_sl: float | None = None):
    return C.la_superloss(logits, targets, log_prior, tau, tau_sl, lam)


LOSSES = {"ce": _ce, "la": _la, "sl": _sl, "la_sl": _la_sl}


def classification_loss(name: str, **options):
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return functools.partial(LOSSES[name], **options)
