"""Classifier re-balancing after the head is trained (Kang et al. 2020, "Decoupling representation
and classifier"; the cRT baseline of Yang & Xu 2020, seeds 001/002).

* ``crt``: re-initialise the classifier and re-train it on the frozen features (everything before
  the classifier, projector layer included, is frozen) with class-balanced sampling;
* ``tau_norm``: post hoc, w_c ← w_c / ||w_c||^τ, bias dropped;
* ``lws``: keep the classifier's weights and learn one scale f_c per class, class-balanced.

Each takes a trained ``Head`` and returns a new ``Head`` usable like the first. ``features`` are
what the classifier sees ((V, n, D) cached versions): the encoder features, or the projector
layer's output for heads that have one (``classifier_input`` in ``stages/finetune.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from ltscale.finetune.trainer import train_head
from ltscale.models.classifier import ClassifierPart, Head, ScaledLinear, TauNormLinear

STAGES = ("none", "crt", "tau_norm", "lws")


def tau_normalize(head: Head, tau: float = 1.0) -> Head:
    linear = head.classifier
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"τ-normalisation needs a linear classifier, got {type(linear).__name__}")
    return head.with_classifier(TauNormLinear.from_linear(linear, tau), "tau_norm",
                                tau=float(tau))


def _retrain(classifier_head: Head, features, labels, *, loss_fn, epochs: int,
             train_kw: dict, metric: str, desc: str) -> tuple[Head, list[dict]]:
    for p in classifier_head.parameters():
        p.requires_grad_(False)
    for p in classifier_head.classifier.parameters():
        p.requires_grad_(True)
    kw = dict(train_kw, balance="class", epochs=epochs, metric=metric, desc=desc)
    trained, history = train_head(ClassifierPart(classifier_head), features, labels,
                                  loss_fn=loss_fn, **kw)
    for p in trained.head.parameters():
        p.requires_grad_(True)
    return trained.head, history


def classifier_retraining(head: Head, features, labels, *, loss_fn, epochs: int,
                          seed: int = 0, **train_kw) -> tuple[Head, list[dict]]:
    """cRT: a freshly initialised classifier trained with class-balanced sampling."""
    torch.manual_seed(seed)
    fresh = head.with_classifier(nn.Linear(head.feature_dim, head.spec["num_classes"]), "linear")
    return _retrain(fresh, features, labels, loss_fn=loss_fn, epochs=epochs,
                    train_kw=dict(train_kw, seed=seed), metric="crt/loss", desc="cRT")


def learnable_weight_scaling(head: Head, features, labels, *, loss_fn, epochs: int,
                             seed: int = 0, **train_kw) -> tuple[Head, list[dict]]:
    """LWS: per-class scales f_c (initialised to 1) trained with class-balanced sampling; the
    classifier's weights and bias stay as they are."""
    linear = head.classifier
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"LWS needs a linear classifier, got {type(linear).__name__}")
    scaled = head.with_classifier(ScaledLinear.from_linear(linear), "lws")
    return _retrain(scaled, features, labels, loss_fn=loss_fn, epochs=epochs,
                    train_kw=dict(train_kw, seed=seed), metric="lws/loss", desc="LWS")


def apply_classifier_stage(stage: str, head: Head, features, labels, *, loss_fn, epochs: int,
                           tau: float = 1.0, **train_kw) -> tuple[Head, list[dict]]:
    """``stage`` (none | crt | tau_norm | lws) applied to a trained head."""
    if stage == "none":
        return head, []
    if stage == "tau_norm":
        return tau_normalize(head, tau), []
    if stage == "crt":
        return classifier_retraining(head, features, labels, loss_fn=loss_fn, epochs=epochs,
                                     **train_kw)
    if stage == "lws":
        return learnable_weight_scaling(head, features, labels, loss_fn=loss_fn, epochs=epochs,
                                        **train_kw)
    raise ValueError(f"unknown classifier stage {stage!r}; choose one of {', '.join(STAGES)}")
