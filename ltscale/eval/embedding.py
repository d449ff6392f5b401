"""A 2-D map of test features: where the classes, and the tail, land in the encoder's space.

``plot_embedding`` draws a stratified subsample of at most ``max_points`` test samples (every
class kept, each class's share proportional to its test count), L2-normalised, reduced to at
most 50 dimensions with PCA, then embedded in 2-D with UMAP when ``umap-learn`` is importable
(it is not a dependency) and t-SNE from scikit-learn otherwise. Points are coloured by class when
there are at most ``MAX_CLASS_COLOURS`` classes, else by Many / Medium / Few shot group, and sized
by the class's training count (square-root scale), so tail classes are the small dots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltscale.eval.plots import _plt, _save

MAX_POINTS = 2000
MAX_CLASS_COLOURS = 10
SHOT_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def stratified_subsample(labels, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` samples (at least one per class while the budget
    allows), each class's share proportional to its count."""
    labels = np.asarray(labels)
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_points / len(labels))).astype(np.int64)
    while quota.sum() > max_points:  # more classes than points: the largest quotas give way
        quota[np.argmax(quota)] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False)
              for c, q in zip(classes, quota) if q > 0]
    return np.sort(np.concatenate(picked))


def embed_2d(features, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n × 2 coordinates, the method's name) of ``features`` (n × D, n ≥ 3)."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # one BLAS/OpenMP thread: a few thousand points need no more, and on a busy machine
    # t-SNE's threads contend (10x slower measured on 2 shared cores)
    with threadpool_limits(1):
        return _embed_2d(features, seed)


def _embed_2d(features, seed: int) -> tuple[np.ndarray, str]:
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > 50 and len(x) > 50:
        from sklearn.decomposition import PCA

        x = PCA(50, random_state=seed).fit_transform(x)
    try:
        import umap  # optional: not a dependency of ltscale
    except ImportError:
        umap = None
    if umap is not None:
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=500)
    return tsne.fit_transform(x), "t-SNE"


def plot_embedding(path: Path, features, labels, train_counts, classes: list[str],
                   groups: dict[str, list[int]], title: str = "",
                   max_points: int = MAX_POINTS, seed: int = 0) -> Path | None:
    """Write the map to ``path``; None (nothing written) with fewer than 3 samples."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = stratified_subsample(labels, max_points, seed)
    if len(keep) < 3:
        return None
    coords, method = embed_2d(np.asarray(features)[keep], seed)
    y = labels[keep]
    counts = np.asarray(train_counts, dtype=np.float64)
    sizes = 4 + 40 * np.sqrt(counts[y] / max(1.0, counts.max()))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if len(classes) <= MAX_CLASS_COLOURS:
        cmap = plt.get_cmap("tab10")
        for c in np.unique(y):
            at = y == c
            ax.scatter(coords[at, 0], coords[at, 1], s=sizes[at], color=cmap(int(c) % 10),
                       alpha=0.7, lw=0, label=f"{classes[c]} ({int(counts[c])})")
        how = "colour: class (training images)"
    else:
        group_of = {c: g for g, cs in groups.items() for c in cs}
        names = np.array([group_of.get(int(c), "few") for c in y])
        for g, colour in SHOT_COLOURS.items():
            at = names == g
            if at.any():
                ax.scatter(coords[at, 0], coords[at, 1], s=sizes[at], color=colour, alpha=0.6,
                           lw=0, label=f"{g} ({len(groups.get(g, []))} classes)")
        how = "colour: shot group"
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title + ': ' if title else ''}{method} of {len(keep)} test features\n"
                 f"{how}; size: training images of the class", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
