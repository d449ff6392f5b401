"""Balanced-test metrics: top-1/top-5, per-class accuracy, balanced accuracy, class groups.

``classification_metrics`` returns a JSON-ready dict:

* ``top1``; ``top5`` only when there are at least 5 classes;
* ``per_class``: accuracy (recall) of every class, NaN for a class absent from the test set;
* ``balanced_acc``: the mean per-class recall over the classes present in the test set (equal to
  ``mean_per_class``, kept under its old name too); on a balanced test set it equals top-1;
* ``many`` / ``medium`` / ``few``: mean per-class accuracy of the Many (> ``many`` training
  images), Medium (``few`` … ``many`` inclusive) and Few (< ``few``) shot groups;
* ``frequent`` / ``medium_third`` / ``rare``: the same over the frequency thirds (FASSL);
* ``groups`` / ``thirds``: the class indices of each group; ``shot_thresholds``;
* ``confusion``: counts, rows = true class, columns = predicted class (dense up to 1,000
  classes, else the non-zero cells: ``ltscale.eval.confusion``);
* ``test_counts``: test images per class;
* ``ece`` / ``ece_many`` / ``ece_medium`` / ``ece_few``: expected calibration error, overall and
  over the test samples of each shot group, and ``reliability``: the bins behind them
  (``ltscale.eval.calibration``, ``ece_bins`` equal-width bins).

A group mean is None (not NaN) when the group has no class present in the test set, so the
report says "n/a" instead of a number. Training counts are the training manifest's labeled
samples by *clean* label when all clean labels are known, else by observed label
(``Manifest.reference_counts``), see ``ltscale.data.shots``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ltscale.data.shots import FEW, MANY, SHOT_NAMES, THIRD_NAMES, frequency_thirds, shot_groups
from ltscale.eval.calibration import ECE_BINS, ECE_KEYS, calibration
from ltscale.eval.confusion import confusion

# the scalar entries of classification_metrics, in report order
SCALAR_KEYS = ("top1", "top5", "balanced_acc", "mean_per_class", *SHOT_NAMES, *THIRD_NAMES,
               *ECE_KEYS)


def group_mean(per_class, classes) -> float | None:
    """Mean accuracy of ``classes`` ignoring classes absent from the test set (NaN); None if none."""
    values = [per_class[c] for c in classes if not math.isnan(per_class[c])]
    return float(np.mean(values)) if values else None


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, train_counts,
                           many: int = MANY, few: int = FEW, ece_bins: int = ECE_BINS) -> dict:
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets).long()
    num_classes = logits.shape[1]
    if len(train_counts) != num_classes:
        raise ValueError(f"{len(train_counts)} training counts for {num_classes} classes")
    pred = logits.argmax(1)
    correct = (pred == targets).float()
    test_counts = torch.bincount(targets, minlength=num_classes)[:num_classes].tolist()
    hits = torch.bincount(targets, weights=correct.double(), minlength=num_classes)[:num_classes]
    per_class = [float(h) / n if n else float("nan") for h, n in zip(hits.tolist(), test_counts)]
    present = [p for p in per_class if not math.isnan(p)]
    balanced = float(np.mean(present)) if present else None
    out = {"top1": float(correct.mean()) if len(correct) else None, "per_class": per_class,
           "balanced_acc": balanced, "mean_per_class": balanced, "test_counts": test_counts}
    if num_classes >= 5:
        top5 = logits.topk(5, dim=1).indices.eq(targets[:, None]).any(1).float()
        out["top5"] = float(top5.mean()) if len(top5) else None
    groups = shot_groups(train_counts, many, few)
    thirds = frequency_thirds(train_counts)
    for name, classes in (groups | thirds).items():
        out[name] = group_mean(per_class, classes)
    out["groups"] = groups
    out |= calibration(logits.float().numpy(), targets.numpy(), groups, ece_bins)
    out["thirds"] = thirds
    out["shot_thresholds"] = {"many": int(many), "few": int(few)}
    out["confusion"] = confusion(targets.numpy(), pred.numpy(), num_classes)
    return out


def scalar_metrics(m: dict) -> dict[str, float]:
    """The scalar entries of a metrics dict that have a value (for trackers and aggregation)."""
    return {k: m[k] for k in SCALAR_KEYS if m.get(k) is not None}
