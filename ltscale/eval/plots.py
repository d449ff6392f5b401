"""Report figures (matplotlib, Agg backend), each written atomically as a PNG.

* ``plot_per_class``: per-class test accuracy against training count, log x-axis, one series per
  model, with the Few / Many thresholds marked;
* ``plot_groups``: grouped bars per model for Many / Medium / Few and for the frequency thirds,
  with ± std error bars when a result carries seed aggregates;
* ``plot_confusion``: the row-normalised confusion matrix (recall per true class) of one model;
  tick labels only up to ``MAX_TICK_CLASSES`` classes, cell values only up to ``MAX_ANNOTATED``,
  blocks of consecutive classes over ``MAX_CELLS`` classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ltscale.core.atomic import atomic_path
from ltscale.eval.confusion import cells, num_classes_of

MAX_TICK_CLASSES = 50
MAX_ANNOTATED = 12
MAX_CELLS = 500  # more classes: the confusion is drawn over blocks of consecutive classes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _pct(v):
    return float("nan") if v is None else 100 * v


def plot_per_class(path: Path, results: dict[str, dict], train_counts, many: int = 100,
                   few: int = 20) -> Path:
    plt = _plt()
    counts = np.asarray(train_counts, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "osD^vP*X"
    for i, (name, m) in enumerate(results.items()):
        acc = np.array([_pct(a) for a in m["per_class"]], dtype=np.float64)
        ax.scatter(counts, acc, s=18, alpha=0.75, marker=markers[i % len(markers)], label=name)
    if (counts <= 0).any():
        ax.set_xscale("symlog", linthresh=1)  # classes without training images sit at 0
    else:
        ax.set_xscale("log")
    for x, text in ((few, f"few < {few}"), (many, f"many > {many}")):
        ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.text(x, 1.0, text, transform=ax.get_xaxis_transform(), fontsize=7, ha="center",
                va="bottom", color="grey")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-class accuracy against training frequency", pad=14)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_groups(path: Path, results: dict[str, dict]) -> Path:
    plt = _plt()
    panels = [("many / medium / few shot", [("many", "many"), ("medium", "medium"),
                                             ("few", "few")]),
              ("frequency thirds", [("frequent", "frequent"), ("medium_third", "medium"),
                                    ("rare", "rare")])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    width = 0.8 / max(1, len(results))
    for ax, (title, keys) in zip(axes, panels):
        x = np.arange(len(keys))
        for i, (name, m) in enumerate(results.items()):
            std = (m.get("seeds") or {}).get("std", {})
            heights = [_pct(m.get(k)) for k, _ in keys]
            errs = [_pct(std.get(k)) if std.get(k) is not None else 0.0 for k, _ in keys]
            bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, np.nan_to_num(heights), width,
                          yerr=errs if any(errs) else None, capsize=2, label=name)
            for b, h, e in zip(bars, heights, errs):
                ax.annotate("n/a" if math.isnan(h) else f"{h:.0f}",
                            (b.get_x() + b.get_width() / 2, 0 if math.isnan(h) else h + e),
                            xytext=(0, 1), textcoords="offset points", ha="center",
                            va="bottom", fontsize=6)
        ax.set_xticks(x)
        ax.set_xticklabels([label for _, label in keys])
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 110)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    if results:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _binned(confusion, bins: int) -> np.ndarray:
    """The confusion summed over blocks of consecutive classes: ``bins`` × ``bins`` cells."""
    t, p, n = cells(confusion)
    c = num_classes_of(confusion)
    out = np.zeros((bins, bins), dtype=np.float64)
    np.add.at(out, (t * bins // c, p * bins // c), n)
    return out


def plot_confusion(path: Path, confusion, classes: list[str], title: str = "") -> Path:
    """Row-normalised confusion; over ``MAX_CELLS`` classes the rows and columns are blocks of
    consecutive classes (the image has at most ``MAX_CELLS``² cells, whatever the classes)."""
    plt = _plt()
    C = num_classes_of(confusion)
    binned = C > MAX_CELLS
    cm = _binned(confusion, MAX_CELLS) if binned else np.asarray(confusion, dtype=np.float64)
    if binned:
        title = f"{title + ', ' if title else ''}{MAX_CELLS} blocks of ~{C / MAX_CELLS:.0f} classes"
        C = MAX_CELLS
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(12.0, max(4.5, 0.35 * C + 2)) if C <= MAX_TICK_CLASSES else 8.0
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(100 * norm, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if C <= MAX_TICK_CLASSES:
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        ax.set_xticklabels(classes, rotation=90, fontsize=7)
        ax.set_yticklabels(classes, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if C <= MAX_ANNOTATED:
        for t in range(C):
            for p in range(C):
                ax.text(p, t, f"{100 * norm[t, p]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[t, p] < 0.5 else "black")
    ax.set_xlabel("predicted class" + (" block" if binned else ""))
    ax.set_ylabel("true class" + (" block" if binned else ""))
    ax.set_title(f"confusion (row-normalised){': ' + title if title else ''}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


RELIABILITY_PANELS = (("all", "all classes"), ("many", "many"), ("medium", "medium"),
                      ("few", "few"))
MAX_RELIABILITY_MODELS = 8


def plot_reliability(path: Path, results: dict[str, dict]) -> Path:
    """Reliability diagrams: per model (a row pair, at most ``MAX_RELIABILITY_MODELS``) and per
    panel (all classes, Many, Medium, Few), the accuracy of each confidence bin as bars against
    the diagonal, the gap to the bin's mean confidence in red, and the bin counts below."""
    plt = _plt()
    models = [(n, m) for n, m in results.items() if m.get("reliability")][:MAX_RELIABILITY_MODELS]
    fig, axes = plt.subplots(2 * max(1, len(models)), len(RELIABILITY_PANELS), squeeze=False,
                             figsize=(3.0 * len(RELIABILITY_PANELS), 3.6 * max(1, len(models))),
                             gridspec_kw={"height_ratios": [3, 1] * max(1, len(models))})
    for row, (name, m) in enumerate(models):
        for col, (key, label) in enumerate(RELIABILITY_PANELS):
            top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
            b = m["reliability"].get(key)
            ece = m.get("ece" if key == "all" else f"ece_{key}")
            top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            top.set_xlim(0, 1)
            top.set_ylim(0, 1)
            top.set_title(f"{name}: {label}\nECE {'n/a' if ece is None else f'{100 * ece:.2f}%'}",
                          fontsize=8)
            if b is None or not sum(b["count"]):
                top.text(0.5, 0.5, "no test samples", ha="center", va="center", fontsize=8)
                continue
            edges = np.asarray(b["edges"])
            width = np.diff(edges)
            acc = np.array([np.nan if a is None else a for a in b["accuracy"]])
            conf = np.array([np.nan if c is None else c for c in b["confidence"]])
            top.bar(edges[:-1], np.nan_to_num(acc), width, align="edge", color="tab:blue",
                    edgecolor="black", lw=0.4, label="accuracy")
            gap_lo, gap = np.minimum(acc, conf), np.abs(acc - conf)
            top.bar(edges[:-1], np.nan_to_num(gap), width, bottom=np.nan_to_num(gap_lo),
                    align="edge", color="tab:red", alpha=0.35, edgecolor="tab:red", lw=0.4,
                    label="gap to confidence")
            bottom.bar(edges[:-1], b["count"], width, align="edge", color="grey")
            bottom.set_xlim(0, 1)
            bottom.set_xlabel("confidence", fontsize=7)
            bottom.tick_params(labelsize=6)
            top.tick_params(labelsize=6)
            if col == 0:
                top.set_ylabel("accuracy", fontsize=7)
                bottom.set_ylabel("count", fontsize=7)
            if row == 0 and col == 0:
                top.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return _save(fig, path, dpi=90)
