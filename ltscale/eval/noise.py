"""How well a per-sample confidence separates clean from mislabelled training samples.

The score is SuperLoss's optimal confidence σ* (seed 000, eq. 4): higher means the sample's loss
is lower than the threshold τ, i.e. more likely clean; σ* < 1 exactly when the loss is above τ.
A sample is *noisy* when its observed label differs from its clean label; samples whose clean
label is unknown (−1) are left out.

Reported:

* ``auroc``: the probability that a random clean sample gets a higher confidence than a random
  noisy one (ties count ½), computed with the Mann–Whitney rank formula
  AUROC = (R_clean − n_clean (n_clean + 1) / 2) / (n_clean · n_noisy), R_clean being the sum of
  the clean samples' ranks among all scores, tied scores sharing their average rank. None, with
  ``auroc_reason``, when no clean or no noisy sample is left.
* detection of the noisy samples by "flag as noisy when σ* < threshold", as precision, recall and
  F1 (the noisy samples are the positives), at ``threshold`` (1.0: loss above τ) and at the
  noise rate: the ``n_noisy`` lowest-confidence samples are flagged (ties at the cut are broken
  by sample order so that exactly that many are flagged; the reported ``threshold`` is the largest
  flagged confidence; there precision = recall = F1).
"""

from __future__ import annotations

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ascending; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 … ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auroc(scores, positive) -> float | None:
    """AUROC of ``scores`` for telling ``positive`` (True) from negative samples; None if one
    class is empty. Ties are handled by average ranks (each tied pair counts ½)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r_pos = average_ranks(scores)[positive].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection(flagged, noisy) -> dict:
    """Precision / recall / F1 of ``flagged`` as a detector of ``noisy`` (None where undefined)."""
    flagged, noisy = np.asarray(flagged, bool), np.asarray(noisy, bool)
    tp = int((flagged & noisy).sum())
    n_flag, n_noisy = int(flagged.sum()), int(noisy.sum())
    precision = tp / n_flag if n_flag else None
    recall = tp / n_noisy if n_noisy else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else
          (0.0 if precision is not None and recall is not None else None))
    return {"flagged": n_flag, "true_positives": tp, "precision": precision, "recall": recall,
            "f1": f1}


def noise_separation(confidence, observed, clean, threshold: float = 1.0) -> dict:
    """Clean-vs-noisy separation of ``confidence`` (higher = more likely clean) on samples with
    ``observed`` and ``clean`` labels (clean −1: unknown, excluded); see the module doc."""
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    observed = np.asarray(observed).reshape(-1)
    clean = np.asarray(clean).reshape(-1)
    if not (len(confidence) == len(observed) == len(clean)):
        raise ValueError(f"confidence, observed and clean lengths differ: {len(confidence)}, "
                         f"{len(observed)}, {len(clean)}")
    known = clean >= 0
    conf, noisy = confidence[known], observed[known] != clean[known]
    n, n_noisy = int(known.sum()), int(noisy.sum())
    out = {"samples": n, "excluded_unknown_clean": int((~known).sum()),
           "noisy": n_noisy, "clean": n - n_noisy,
           "noise_rate": n_noisy / n if n else None,
           "mean_confidence_clean": float(conf[~noisy].mean()) if n - n_noisy else None,
           "mean_confidence_noisy": float(conf[noisy].mean()) if n_noisy else None}
    out["auroc"] = auroc(conf, ~noisy)
    if out["auroc"] is None:
        out["auroc_reason"] = ("no sample has a known clean label" if n == 0 else
                               "no noisy sample among those with a known clean label"
                               if n_noisy == 0 else
                               "no clean sample among those with a known clean label")
    out["at_threshold"] = {"threshold": float(threshold), **detection(conf < threshold, noisy)}
    flag = np.zeros(n, dtype=bool)
    flag[np.argsort(conf, kind="stable")[:n_noisy]] = True
    cut = float(conf[flag].max()) if n_noisy else None
    out["at_noise_rate"] = {"threshold": cut, **detection(flag, noisy)}
    return out
