"""Label-aware contrastive losses on two views: SupCon (Khosla et al. 2020), KCL (Kang et al.
2021) and SBCL's bi-granularity loss (Hou et al. 2023, eq. 4).

Shared layout (as ``nt_xent``): this rank's anchors are the 2n rows ``[z1; z2]``; the candidates
are the 2N rows ``[z_all1; z_all2]`` of the global batch (all ranks, rank order, default: this
rank's own), whose images ``offset .. offset + n`` are this rank's. Projections are L2-normalised
here; an anchor never contrasts with itself; every loss is the mean over this rank's anchors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltscale.losses.ssl import _wide


def _layout(z1, z2, z_all1, z_all2, offset):
    """Normalised anchors (2n, d), candidates (2N, d), and each anchor's own column and its
    other view's column among the candidates."""
    z_all1 = z1 if z_all1 is None else z_all1
    z_all2 = z2 if z_all2 is None else z_all2
    n, big_n = z1.shape[0], z_all1.shape[0]
    anchors = F.normalize(_wide(torch.cat([z1, z2])), dim=1)
    cands = F.normalize(_wide(torch.cat([z_all1, z_all2])), dim=1)
    local = torch.arange(n, device=z1.device) + offset
    self_col = torch.cat([local, local + big_n])
    pair_col = torch.cat([local + big_n, local])
    return anchors, cands, self_col, pair_col


def _not_self(rows: int, cols: int, self_col: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(rows, cols, dtype=torch.bool, device=self_col.device)
    keep[torch.arange(rows, device=self_col.device), self_col] = False
    return keep


def _two_view_labels(y: torch.Tensor, y_all: torch.Tensor | None):
    """Anchor and candidate labels in the [view 1; view 2] layout."""
    y_all = y if y_all is None else y_all
    return torch.cat([y, y]), torch.cat([y_all, y_all])


def positive_mean_log_prob(logits: torch.Tensor, candidates: torch.Tensor,
                           positives: torch.Tensor) -> torch.Tensor:
    """Per anchor: mean over its ``positives`` of log softmax(logits) restricted to
    ``candidates`` (boolean masks, positives ⊆ candidates); 0 for an anchor without positives."""
    masked = logits.masked_fill(~candidates, float("-inf"))
    # a row without candidates has no positives either: a finite stand-in keeps its gradient 0
    masked = torch.where(candidates.any(1, keepdim=True), masked, torch.zeros_like(masked))
    log_z = torch.logsumexp(masked, dim=1, keepdim=True)
    log_prob = (logits - log_z).masked_fill(~positives, 0.0)
    count = positives.sum(1)
    return log_prob.sum(1) / count.clamp(min=1)


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
                temperature: float = 0.1, z_all1: torch.Tensor | None = None,
                z_all2: torch.Tensor | None = None, labels_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """SupCon's L_out: every other view with the anchor's label is a positive (the anchor's own
    other view included), every view but the anchor itself is in the denominator."""
    anchors, cands, self_col, _ = _layout(z1, z2, z_all1, z_all2, offset)
    ya, yc = _two_view_labels(labels, labels_all)
    logits = anchors @ cands.T / temperature
    candidates = _not_self(*logits.shape, self_col)
    positives = (ya[:, None] == yc[None, :]) & candidates
    return -positive_mean_log_prob(logits, candidates, positives).mean()


def kcl_positives(labels: torch.Tensor, labels_all: torch.Tensor, self_col: torch.Tensor,
                  pair_col: torch.Tensor, k: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """KCL's positive mask (2n, 2N): the anchor's other view plus ``k`` views drawn uniformly
    without replacement among the other same-label views (all of them when fewer than ``k``).
    ``labels``/``labels_all`` are in the two-view layout."""
    rows, cols = labels.shape[0], labels_all.shape[0]
    r = torch.arange(rows, device=labels.device)
    eligible = labels[:, None] == labels_all[None, :]
    eligible[r, self_col] = False
    eligible[r, pair_col] = False
    if generator is None:
        noise = torch.rand(rows, cols, device=labels.device)
    else:
        noise = torch.rand(rows, cols, generator=generator,
                           device=generator.device).to(labels.device)
    scores = noise.masked_fill(~eligible, -1.0)
    chosen = torch.zeros_like(eligible)
    if k > 0 and cols > 0:
        top, idx = scores.topk(min(k, cols), dim=1)
        chosen.scatter_(1, idx, top >= 0)
    chosen[r, pair_col] = True
    return chosen


def kcl_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, k: int = 6,
             temperature: float = 0.1, z_all1: torch.Tensor | None = None,
             z_all2: torch.Tensor | None = None, labels_all: torch.Tensor | None = None,
             offset: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """KCL (eq. 2 of the SBCL paper): the positives of ``kcl_positives`` (k + 1 per anchor when
    the batch holds k other same-label views, the log-likelihood averaged over them), every view
    but the anchor itself in the denominator."""
    anchors, cands, self_col, pair_col = _layout(z1, z2, z_all1, z_all2, offset)
    ya, yc = _two_view_labels(labels, labels_all)
    logits = anchors @ cands.T / temperature
    candidates = _not_self(*logits.shape, self_col)
    positives = kcl_positives(ya, yc, self_col, pair_col, k, generator)
    return -positive_mean_log_prob(logits, candidates, positives).mean()


def sbcl_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
              subclasses: torch.Tensor, tau1: float, tau2: torch.Tensor, beta: float,
              z_all1: torch.Tensor | None = None, z_all2: torch.Tensor | None = None,
              labels_all: torch.Tensor | None = None,
              subclasses_all: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """SBCL's bi-granularity loss (eq. 4).

    Term 1, at temperature ``tau1``: SupCon over subclass labels (positives: the anchor's
    subclass, its own other view included; denominator: every view but itself). Term 2, weighted
    by ``beta``, at the anchor's class temperature ``tau2[label]`` (``tau2``: one value per class):
    positives are same-class views of other subclasses; the anchor's subclass is left out of the
    denominator as well. An anchor whose class has no other subclass in the batch has no term 2.
    ``subclasses`` are globally unique ids (two classes never share one)."""
    anchors, cands, self_col, _ = _layout(z1, z2, z_all1, z_all2, offset)
    ya, yc = _two_view_labels(labels, labels_all)
    sa, sc = _two_view_labels(subclasses, subclasses_all)
    sim = anchors @ cands.T
    candidates = _not_self(*sim.shape, self_col)
    same_sub = sa[:, None] == sc[None, :]
    fine = positive_mean_log_prob(sim / tau1, candidates, same_sub & candidates)
    coarse_cands = candidates & ~same_sub
    coarse_pos = (ya[:, None] == yc[None, :]) & coarse_cands
    temps = _wide(tau2.to(sim.device, sim.dtype))[ya][:, None]
    coarse = positive_mean_log_prob(sim / temps, coarse_cands, coarse_pos)
    return -(fine + beta * coarse).mean()
