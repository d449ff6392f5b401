"""SBCL's subclass-balancing clustering (Hou et al. 2023, Algorithm 1, eq. 3) and its dynamic
class temperatures (eqs. 5–6), as plain functions of a feature bank.

Every class with more than M = max(n_C, δ) samples (n_C: the smallest class, δ: a floor) is cut
into m_c = ⌈n_c / M⌉ subclasses of at most ⌈n_c / m_c⌉ ≤ M samples each (the even split keeps
the last subclass from ending up tiny); smaller (tail) classes stay whole. Inside a class the
clustering is k-means on the unit sphere with a size cap: farthest-first initial centers, then
the paper's greedy assignment (repeatedly the most similar free sample / open center pair; a
center closes once full), then centers := means, reassigned, for a few iterations.

Samples with no feature yet (never seen in training) are placed after the clustering into the
least filled subclasses of their class, so every sample has a subclass and the cap holds.
Everything here is deterministic given the features, labels and seed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def subclass_cap(class_counts: torch.Tensor, delta: int) -> int:
    """M = max(n_C, δ): n_C is the smallest non-empty class (eq. 3)."""
    present = class_counts[class_counts > 0]
    if present.numel() == 0:
        raise ValueError("subclass_cap: every class is empty")
    return max(int(present.min()), int(delta))


def subclass_counts(class_counts: torch.Tensor, cap: int) -> torch.Tensor:
    """m_c = ⌈n_c / M⌉ subclasses per class (1 for a tail class, 0 for an empty one)."""
    return torch.div(class_counts + cap - 1, cap, rounding_mode="floor")


def farthest_first(x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``m`` initial centers among the unit rows ``x``: the first drawn with
    ``generator``, each next one the row least similar to its most similar chosen center."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    chosen = [first]
    closest = x @ x[first]
    for _ in range(1, m):
        closest = closest.clone()
        closest[chosen] = float("inf")
        nxt = int(torch.argmin(closest))
        chosen.append(nxt)
        closest = torch.maximum(closest, x @ x[nxt])
    return torch.tensor(chosen, device=x.device)


def _rank_in_group(groups: torch.Tensor, m: int) -> torch.Tensor:
    """For each position, how many earlier positions hold the same group id (0 … m−1); the
    same as a one-hot cumulative sum but O(n log n) time and O(n) memory instead of O(n·m)."""
    by_group = torch.sort(groups, stable=True).indices
    sizes = torch.bincount(groups, minlength=m)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(groups)
    rank[by_group] = torch.arange(groups.numel(), device=groups.device) - starts[groups[by_group]]
    return rank


def capped_greedy_assign(x: torch.Tensor, centers: torch.Tensor, cap: int) -> torch.Tensor:
    """Algorithm 1's assignment: take the most cosine-similar (unassigned sample, open center)
    pair, assign it, close a center holding ``cap`` samples; until every sample is assigned.

    Vectorised in rounds with the same result: until some center fills, the greedy order simply
    assigns each sample to its best open center, in decreasing similarity. So a round gives every
    free sample its best open center, sorts them, accepts the prefix up to the sample that fills a
    center, closes that center and repeats (at most one round per center). Ties go to the lower
    sample index, then the lower center index."""
    n, m = x.shape[0], centers.shape[0]
    if m * cap < n:
        raise ValueError(f"{m} centers of at most {cap} samples cannot hold {n} samples")
    sim = F.normalize(x, dim=1) @ F.normalize(centers, dim=1).T
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    room = torch.full((m,), cap, dtype=torch.long, device=x.device)
    free = torch.arange(n, device=x.device)
    while free.numel():
        s = sim[free].masked_fill((room == 0)[None, :], float("-inf"))
        best_sim, best = s.max(1)
        order = torch.sort(best_sim, descending=True, stable=True).indices
        target = best[order]
        filled = _rank_in_group(target, m) + 1  # how full target's center is after this one
        full = (filled == room[target]).nonzero()
        take = order if full.numel() == 0 else order[:int(full[0]) + 1]
        assign[free[take]] = best[take]
        room -= torch.bincount(best[take], minlength=m)
        rest = torch.ones(free.numel(), dtype=torch.bool, device=x.device)
        rest[take] = False
        free = free[rest]  # stays in increasing sample order
    return assign


def balanced_kmeans(x: torch.Tensor, m: int, cap: int, iters: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Cluster ids 0 … m−1 of the rows of ``x`` (cosine k-means, clusters of at most ``cap``)."""
    n = x.shape[0]
    if m <= 1 or n == 0:
        return torch.zeros(n, dtype=torch.long, device=x.device)
    x = F.normalize(x.float(), dim=1)
    centers = x[farthest_first(x, m, generator)]
    assign = capped_greedy_assign(x, centers, cap)
    for _ in range(iters):
        onehot = F.one_hot(assign, m).to(x.dtype)              # (n, m)
        sizes = onehot.sum(0)
        means = (onehot.T @ x) / sizes.clamp(min=1)[:, None]
        centers = torch.where(sizes[:, None] > 0, means, centers)  # an empty cluster keeps its
        new = capped_greedy_assign(x, centers, cap)                # old center
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def fill_least_full(sizes: torch.Tensor, cap: int, count: int) -> torch.Tensor:
    """Cluster ids for ``count`` more samples, each into a currently least filled cluster (ties:
    lower id), never past ``cap``."""
    m = sizes.shape[0]
    level = torch.arange(cap, device=sizes.device)[None, :].expand(m, cap)
    free = level >= sizes[:, None]
    key = (level * m + torch.arange(m, device=sizes.device)[:, None])[free]
    ids = torch.arange(m, device=sizes.device)[:, None].expand(m, cap)[free]
    if key.numel() < count:
        raise ValueError(f"{m} clusters of at most {cap} have room for {key.numel()} more "
                         f"samples, not {count}")
    return ids[torch.argsort(key)[:count]]


def balanced_subclasses(features: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor,
                        num_classes: int, delta: int, iters: int = 10, seed: int = 0,
                        classes: list[int] | None = None) -> torch.Tensor:
    """Subclass id of every sample (globally unique: class c owns ids offset_c … offset_c +
    m_c − 1), −1 for classes outside ``classes`` (default: all) and for unlabeled samples.

    ``features`` (N, d): the bank; ``labels`` (N,) class labels (−1: unlabeled); ``seen`` (N,)
    which rows of the bank hold a feature. Class c is seeded with ``seed`` and c only, so any
    subset of classes gives the same ids as the whole."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes)[:num_classes]
    cap = subclass_cap(counts, delta)
    m = subclass_counts(counts, cap)
    offsets = torch.cumsum(m, 0) - m
    out = torch.full_like(labels, -1)
    # members of every class from one sort, not one scan of all labels per class (N·C)
    by_class = torch.sort(labels, stable=True).indices
    ends = torch.cumsum(torch.bincount(labels + 1, minlength=num_classes + 1), 0).tolist()
    for c in range(num_classes) if classes is None else classes:
        members = by_class[ends[c]:ends[c + 1]]  # unlabeled (−1) rows sort before ends[0]
        n_c, m_c = members.numel(), int(m[c])
        if n_c == 0:
            continue
        if m_c == 1:
            out[members] = int(offsets[c])
            continue
        c_cap = math.ceil(n_c / m_c)
        known = members[seen[members]]
        unknown = members[~seen[members]]
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        local = torch.full((n_c,), -1, dtype=torch.long, device=labels.device)
        is_known = seen[members]
        local[is_known] = balanced_kmeans(features[known], min(m_c, known.numel()), c_cap,
                                          iters, g)
        if unknown.numel():
            sizes = torch.bincount(local[is_known], minlength=m_c)
            local[~is_known] = fill_least_full(sizes, c_cap, unknown.numel())
        out[members] = local + int(offsets[c])
    return out


def class_concentration(features: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor,
                        num_classes: int, alpha: float) -> torch.Tensor:
    """φ(c) = Σ_i ‖z_i − t_c‖ / (n_c · log(n_c + α)) over the class's seen unit features z_i,
    t_c their mean (eq. 5); NaN for a class with no seen sample."""
    use = seen & (labels >= 0)
    y, z = labels[use], F.normalize(features[use].float(), dim=1)
    n = torch.bincount(y, minlength=num_classes)[:num_classes].to(z.dtype)
    centroid = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    centroid.index_add_(0, y, z)
    centroid /= n.clamp(min=1)[:, None]
    spread = torch.zeros(num_classes, dtype=z.dtype, device=z.device)
    spread.index_add_(0, y, (z - centroid[y]).norm(dim=1))
    phi = spread / (n * torch.log(n + alpha))
    return torch.where(n > 0, phi, torch.full_like(phi, float("nan")))


def class_temperatures(phi: torch.Tensor, tau1: float) -> torch.Tensor:
    """τ2(c) = τ1 · exp(φ(c) / mean φ) (eq. 6): above τ1, larger for a looser class. A class
    without φ (no seen sample) gets the mean's value τ1·e; all-zero φ gives τ1·e everywhere."""
    known = ~torch.isnan(phi)
    mean = phi[known].mean() if known.any() else phi.new_tensor(0.0)
    ratio = phi / mean if float(mean) > 0 else torch.ones_like(phi)
    ratio = torch.where(known, ratio, torch.ones_like(ratio))
    return tau1 * torch.exp(ratio)
