"""Mean ± standard deviation of metrics over seeds.

``aggregate(results)`` takes one metrics dict per seed (as ``classification_metrics`` returns, or
any dict of numbers) and summarises every scalar metric: the mean and the sample standard
deviation (ddof = 1; None for a single seed). A metric that is None or missing in some seeds is
averaged over the seeds that have it (``n`` says how many). Lists of numbers of equal length in
every seed (``per_class``) are averaged element-wise, ignoring NaN.

``merge_seeds(results)`` makes one result for ``write_report``: the per-seed means in place of
the scalars and ``per_class``, the confusion matrices summed, group lists from the first seed and
the aggregate under ``"seeds"``; the report then shows "mean ± std" cells. Reliability bins are
pooled over the seeds (``ltscale.eval.calibration.merge_bins``).
"""

from __future__ import annotations

import math
import numbers
import re
import warnings

import numpy as np

from ltscale.eval.calibration import merge_bins
from ltscale.eval.confusion import merge as merge_confusions
from ltscale.eval.confusion import num_classes_of


def _is_scalar(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_vector(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_scalar(x) for x in v)


def aggregate(results: list[dict]) -> dict:
    """{"n_seeds", "mean", "std", "n", "values", "per_class_mean", "per_class_std"} over seeds."""
    if not results:
        raise ValueError("aggregate() needs at least one result")
    keys: list[str] = []
    for r in results:
        keys += [k for k, v in r.items() if _is_scalar(v) and k not in keys]
    mean, std, n, values = {}, {}, {}, {}
    for k in keys:
        vals = [float(r[k]) for r in results if _is_scalar(r.get(k)) and not math.isnan(r[k])]
        values[k] = [float(r[k]) if _is_scalar(r.get(k)) else None for r in results]
        n[k] = len(vals)
        mean[k] = float(np.mean(vals)) if vals else None
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    out = {"n_seeds": len(results), "mean": mean, "std": std, "n": n, "values": values}
    pcs = [r.get("per_class") for r in results]
    if all(_is_vector(p) for p in pcs) and len({len(p) for p in pcs}) == 1:
        arr = np.asarray(pcs, dtype=np.float64)
        with warnings.catch_warnings():  # a class absent from every seed's test set: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out["per_class_mean"] = np.nanmean(arr, axis=0).tolist()
            out["per_class_std"] = (np.nanstd(arr, axis=0, ddof=1).tolist()
                                    if len(results) > 1 else None)
    return out


def merge_seeds(results: list[dict]) -> dict:
    """One report-ready result from per-seed metrics dicts (see the module doc)."""
    agg = aggregate(results)
    merged = dict(results[0])
    merged.update({k: v for k, v in agg["mean"].items()})
    if "per_class_mean" in agg:
        merged["per_class"] = agg["per_class_mean"]
    confusions = [r.get("confusion") for r in results]
    if (all(c is not None for c in confusions)
            and len({num_classes_of(c) for c in confusions}) == 1):
        merged["confusion"] = merge_confusions(confusions)
    rel = [r.get("reliability") for r in results]
    if all(r is not None for r in rel):
        merged["reliability"] = {g: merge_bins([r[g] for r in rel]) for g in rel[0]
                                 if all(g in r for r in rel)}
    budgets = [r.get("budget") for r in results]
    if all(b is not None for b in budgets):  # images and steps agree over seeds; seconds vary
        merged["budget"] = {k: float(np.mean([b[k] for b in budgets])) for k in budgets[0]}
    merged["seeds"] = agg
    return merged


# metrics that are not fractions of one (times, losses, rates, sizes, counts): shown as logged
_NOT_FRACTION = re.compile(r"^(test/)?(train|epoch|budget)/|(loss|lr|seconds|skipped|z_std"
                           r"|images_per_s|_mb)$")
# counts, shown without decimals
_COUNT = re.compile(r"^budget/(images|steps)$")


def is_fraction(metric: str) -> bool:
    """Whether ``metric`` is a fraction of one (accuracy, ECE, AUROC), shown as percent."""
    return not _NOT_FRACTION.search(metric)


def format_metric(metric: str, mean: float | None, std: float | None, digits: int = 2) -> str:
    """``format_mean_std`` for fractions; other metrics (e.g. ``pretrain/seconds``) as logged."""
    if is_fraction(metric):
        return format_mean_std(mean, std, digits)
    if _COUNT.match(metric):
        digits = 0
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    """Fractions as percent: "55.12 ± 0.84"; just "55.12" without a std; "n/a" without a mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{100 * mean:.{digits}f}"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {100 * std:.{digits}f}"
