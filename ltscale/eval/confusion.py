"""Confusion matrices that stay small with many classes.

Up to ``DENSE_MAX`` classes a confusion matrix is a dense list of rows (rows = true class,
columns = predicted class). Above that (iNaturalist 2018 has 8,142 classes: 66 M cells, over
2 GB as Python lists and hundreds of MB of JSON) it is kept as its non-zero cells,
``{"classes": C, "true": [...], "pred": [...], "count": [...]}``: at most one cell per test
image. ``cells`` reads either form; ``merge`` sums several of the same shape.
"""

from __future__ import annotations

import numpy as np

DENSE_MAX = 1000


def confusion(targets, pred, num_classes: int):
    """The confusion of ``pred`` against ``targets``: dense rows or sparse cells (see above)."""
    key = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    if num_classes <= DENSE_MAX:
        return np.bincount(key, minlength=num_classes ** 2).reshape(num_classes, -1).tolist()
    cells, count = np.unique(key, return_counts=True)
    return {"classes": int(num_classes), "true": (cells // num_classes).tolist(),
            "pred": (cells % num_classes).tolist(), "count": count.tolist()}


def num_classes_of(conf) -> int:
    return int(conf["classes"]) if isinstance(conf, dict) else len(conf)


def cells(conf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true, pred, count) of the non-zero cells, either form."""
    if isinstance(conf, dict):
        return (np.asarray(conf["true"], np.int64), np.asarray(conf["pred"], np.int64),
                np.asarray(conf["count"], np.int64))
    dense = np.asarray(conf, dtype=np.int64)
    t, p = np.nonzero(dense)
    return t, p, dense[t, p]


def merge(confusions: list):
    """The sum of confusions of one shape (e.g. over seeds), in the form ``confusion`` gives."""
    c = num_classes_of(confusions[0])
    parts = [cells(x) for x in confusions]
    t = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    n = np.concatenate([q[2] for q in parts])
    return confusion(np.repeat(t, n), np.repeat(p, n), c)
