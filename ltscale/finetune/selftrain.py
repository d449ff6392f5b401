"""Self-training on the manifest's unlabeled pool (Yang & Xu 2020, §2 "Semi-supervised imbalanced
learning"): a teacher trained on the labeled set D_L pseudo-labels the unlabeled pool D_U, and a
student learns from D_L ∪ pseudo-labelled D_U by minimising L(D_L) + ω·L(D_U).

What is here: the teacher's predictions over a loader (``teacher_logits``; the self-training
stage, ``stages/selftrain.py``, builds the D_U loader and calls it), the rule that turns
them into pseudo-labels (``assign_pseudo_labels``: argmax, optionally only above a confidence
threshold), the student's training set (``combined_training_set``: rows, labels, per-sample
weights) and the pseudo-label quality figures (``pseudo_label_metrics``).

No leakage: D_U is read with label −1 for every row, so neither the index's labels nor the
manifest's clean labels can reach the pseudo-labels; the clean labels are used afterwards, by
``pseudo_label_metrics`` only, to report how good the pseudo-labels were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ltscale.core.errors import ManifestError, RecipeError

UNLABELED = -1  # the label D_U rows carry into the loader (and a rejected pseudo-label)


@dataclass
class PseudoLabels:
    rows: np.ndarray        # int64 index rows of D_U, in the manifest's order
    predicted: np.ndarray   # int64 teacher's argmax class (−1: a row that could not be read)
    confidence: np.ndarray  # float32 teacher's softmax probability of that class
    threshold: float = 0.0  # a pseudo-label is kept when its confidence is at least this

    @property
    def labels(self) -> np.ndarray:
        """The pseudo-labels: the predicted class, −1 where left out (below the threshold)."""
        return np.where(self.kept, self.predicted, UNLABELED)

    @property
    def kept(self) -> np.ndarray:
        return (self.predicted >= 0) & (self.confidence >= self.threshold)

    def save(self, fh) -> None:
        np.savez(fh, rows=self.rows, predicted=self.predicted, confidence=self.confidence,
                 labels=self.labels, threshold=np.float64(self.threshold))


@dataclass
class TrainingSet:
    """What the student trains on, position by position: D_L first, then the kept D_U rows."""
    rows: np.ndarray     # int64 index rows
    labels: np.ndarray   # int64 observed labels (D_L) and pseudo-labels (D_U)
    weights: np.ndarray  # float32 per-sample loss weights: 1 for D_L, ω for D_U
    pseudo: np.ndarray   # bool: the sample is pseudo-labelled

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


def assign_pseudo_labels(logits: torch.Tensor, threshold: float = 0.0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predicted, confidence) from teacher logits (n, C): the argmax class, its softmax
    probability, and the pseudo-labels (the argmax where its probability reaches ``threshold``,
    else −1: left out)."""
    if not 0.0 <= threshold <= 1.0:
        raise RecipeError(f"selftrain.threshold must lie in [0, 1], got {threshold}")
    probs = torch.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    predicted = predicted.to(torch.int64).numpy().copy()
    confidence = confidence.numpy().astype(np.float32)
    labels = np.where(confidence >= threshold, predicted, UNLABELED)
    return labels, predicted, confidence


def unlabeled_rows(manifest) -> np.ndarray:
    """The index rows of the manifest's unlabeled pool D_U (its observed labels are ignored)."""
    rows, _ = manifest.rows("unlabeled")
    if not len(rows):
        raise ManifestError(
            f"manifest {manifest.hash} has no unlabeled pool: self-training needs one; set "
            "manifest.unlabeled.multiple (e.g. 5, the paper's D_U@5x) or use a manifest made "
            "with --unlabeled-multiple")
    return rows


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, loader, device) -> tuple[torch.Tensor, np.ndarray]:
    """The teacher's logits over ``loader`` (batches ``(x, y, positions, …)``) and the positions
    they belong to. ``teacher.logits(x)`` is used when the teacher has it, else ``teacher(x)``."""
    was_training = teacher.training
    teacher.eval()
    forward = getattr(teacher, "logits", teacher)
    outs, positions = [], []
    for batch in loader:
        outs.append(forward(batch[0].to(device)).float().cpu())
        positions.append(np.asarray(batch[2]))
    teacher.train(was_training)
    return torch.cat(outs), np.concatenate(positions).astype(np.int64)


def combined_training_set(manifest, pseudo: PseudoLabels, weight: float) -> TrainingSet:
    """D_L (observed labels, weight 1) followed by the pseudo-labelled D_U rows that were kept
    (weight ``weight`` = ω)."""
    if weight < 0:
        raise RecipeError(f"selftrain.weight (ω) must be non-negative, got {weight}")
    ids, observed = manifest.rows("labeled")
    keep = pseudo.kept
    rows = np.concatenate([ids, pseudo.rows[keep]]).astype(np.int64)
    labels = np.concatenate([observed, pseudo.labels[keep]]).astype(np.int64)
    weights = np.concatenate([np.ones(len(ids)), np.full(int(keep.sum()), weight)])
    flag = np.concatenate([np.zeros(len(ids), bool), np.ones(int(keep.sum()), bool)])
    return TrainingSet(rows=rows, labels=labels, weights=weights.astype(np.float32), pseudo=flag)


def pseudo_label_metrics(pseudo: PseudoLabels, manifest) -> dict[str, float]:
    """Pool size, kept share, mean confidence, per-class pseudo-label counts and, where the
    manifest knows the clean label of a D_U row, the accuracy of the kept pseudo-labels
    (``pseudo_accuracy``) and of the teacher's argmax over the whole pool
    (``teacher_pool_accuracy``). For analysis only: nothing here feeds back into training."""
    m = manifest.mask("unlabeled")
    clean_of = dict(zip(manifest.ids[m].tolist(), manifest.clean[m].tolist()))
    clean = np.array([clean_of.get(r, -1) for r in pseudo.rows.tolist()], dtype=np.int64)
    kept, known = pseudo.kept, clean >= 0
    n = len(pseudo.rows)
    out = {"selftrain/pool": float(n), "selftrain/kept": float(kept.sum()),
           "selftrain/kept_fraction": float(kept.mean()) if n else 0.0,
           "selftrain/clean_known": float(known.sum()),
           "selftrain/mean_confidence": float(pseudo.confidence.mean()) if n else 0.0}
    counts = np.bincount(pseudo.labels[kept], minlength=manifest.num_classes)
    out |= {f"selftrain/pseudo_count_{c}": float(k) for c, k in enumerate(counts)}
    if (kept & known).any():
        out["selftrain/pseudo_accuracy"] = float(
            (pseudo.labels[kept & known] == clean[kept & known]).mean())
    if known.any():
        out["selftrain/teacher_pool_accuracy"] = float(
            (pseudo.predicted[known] == clean[known]).mean())
    return out
