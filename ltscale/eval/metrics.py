"""Balanced-test metrics: overall top-1/top-5, per-class accuracy, Many / Medium / Few shot.

Shot groups count the *clean* labels of the training manifest, i.e. the imbalance profile the
experiment designed (with symmetric noise the observed counts of tail classes are inflated by
mislabelled head images). For a dataset whose clean labels are unknown the manifest's clean
labels equal the observed ones. Many: > many images, Few: < few, Medium: in between.
"""

from __future__ import annotations

import numpy as np
import torch

from ltscale.eval.shots import shot_groups


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, train_counts,
                           many: int = 100, few: int = 20) -> dict:
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    correct = (pred == targets).float()
    per_class = [float(correct[targets == c].mean()) if (targets == c).any() else float("nan")
                 for c in range(num_classes)]
    out = {"top1": float(correct.mean()), "per_class": per_class,
           "mean_per_class": float(np.nanmean(per_class))}
    if num_classes >= 5:
        top5 = logits.topk(5, dim=1).indices.eq(targets[:, None]).any(1).float()
        out["top5"] = float(top5.mean())
    groups = shot_groups(train_counts, many, few)
    for name, classes in groups.items():
        # None (not NaN) when a group has no classes: the report says so instead of a number
        out[name] = float(np.nanmean([per_class[c] for c in classes])) if classes else None
    out["groups"] = groups
    out["confusion"] = np.bincount(targets.numpy() * num_classes + pred.numpy(),
                                   minlength=num_classes ** 2).reshape(num_classes, -1).tolist()
    return out
