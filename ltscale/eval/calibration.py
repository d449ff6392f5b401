"""Calibration: expected calibration error and reliability bins (Guo et al. 2017).

A prediction's confidence is its top softmax probability (the softmax of the logits the model
predicts with). Confidences are put into ``bins`` equal-width bins over [0, 1]; bin ``m``
(1-based) holds the confidences in ((m-1)/M, m/M], the first bin also holds 0. Per bin:

* ``count``: predictions in the bin;
* ``accuracy``: the fraction of them that are correct;
* ``confidence``: their mean confidence.

ECE = Σ_m (count_m / n) · |accuracy_m − confidence_m| over the non-empty bins, a fraction in
[0, 1] (the report shows it in percent). A perfectly calibrated model has ECE 0; a model that
always says 0.9 but is right half of the time has ECE 0.4.

Per Many / Medium / Few group, ECE is taken over the test samples whose *true* class is in the
group (normalised by that group's sample count); None when the group has no test sample.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
ECE_KEYS = ("ece", "ece_many", "ece_medium", "ece_few")


def confidences(logits, chunk_elements: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """(top softmax probability, predicted class) of each row of ``logits``.

    The top probability is 1 / Σ_c exp(z_c − max z), computed over row blocks of at most
    ``chunk_elements`` values in float64: no probability matrix is made (8,142 classes × tens
    of thousands of test images would be gigabytes)."""
    z = np.asarray(logits)
    if len(z) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    rows = max(1, chunk_elements // max(1, z.shape[1]))
    top = np.empty(len(z))
    pred = np.empty(len(z), dtype=np.int64)
    for start in range(0, len(z), rows):
        block = np.asarray(z[start:start + rows], dtype=np.float64)
        pred[start:start + rows] = block.argmax(axis=1)
        shifted = block - block.max(axis=1, keepdims=True)
        top[start:start + rows] = 1.0 / np.exp(shifted).sum(axis=1)
    return top, pred


def reliability_bins(conf, correct, bins: int = ECE_BINS) -> dict:
    """{"edges", "count", "accuracy", "confidence"} of equal-width bins (see the module doc);
    accuracy and confidence are None for an empty bin."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    hits = np.bincount(idx, weights=correct, minlength=bins)
    total = np.bincount(idx, weights=conf, minlength=bins)
    return {"edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
            "count": count.tolist(),
            "accuracy": [float(h / n) if n else None for h, n in zip(hits, count)],
            "confidence": [float(s / n) if n else None for s, n in zip(total, count)]}


def ece_of_bins(b: dict) -> float | None:
    """ECE of ``reliability_bins`` output; None when no sample fell into any bin."""
    n = sum(b["count"])
    if not n:
        return None
    return float(sum(c / n * abs(a - s) for c, a, s in
                     zip(b["count"], b["accuracy"], b["confidence"]) if c))


def expected_calibration_error(logits, targets, bins: int = ECE_BINS) -> float | None:
    conf, pred = confidences(logits)
    return ece_of_bins(reliability_bins(conf, pred == np.asarray(targets), bins))


def calibration(logits, targets, groups: dict[str, list[int]], bins: int = ECE_BINS) -> dict:
    """``ece`` and ``ece_<group>`` for each of ``groups`` (class lists, e.g. many/medium/few),
    plus the bins behind them under ``reliability`` ({"all": bins, "<group>": bins})."""
    targets = np.asarray(targets, dtype=np.int64)
    conf, pred = confidences(logits)
    correct = pred == targets
    reliability = {"all": reliability_bins(conf, correct, bins)}
    for name, classes in groups.items():
        keep = np.isin(targets, np.asarray(classes, dtype=np.int64))
        reliability[name] = reliability_bins(conf[keep], correct[keep], bins)
    out = {"ece": ece_of_bins(reliability["all"])}
    out |= {f"ece_{name}": ece_of_bins(reliability[name]) for name in groups}
    out["reliability"] = reliability
    return out


def merge_bins(parts: list[dict]) -> dict:
    """Bins of several runs (seeds) pooled: counts added, accuracy and confidence weighted by
    count, as if all their test predictions had been binned together."""
    edges = parts[0]["edges"]
    count = np.sum([p["count"] for p in parts], axis=0)

    def pooled(key):
        s = np.sum([[(v or 0.0) * c for v, c in zip(p[key], p["count"])] for p in parts], axis=0)
        return [float(x / n) if n else None for x, n in zip(s, count)]

    return {"edges": edges, "count": count.tolist(), "accuracy": pooled("accuracy"),
            "confidence": pooled("confidence")}
