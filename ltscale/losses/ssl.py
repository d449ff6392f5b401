"""Self-supervised loss maths."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs (autocast) computed in float32; float32/float64 kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """−cos(p, sg(z)) averaged over the batch (SimSiam's D with stop-gradient on z)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised SimSiam loss ½·D(p1, z2) + ½·D(p2, z1); its minimum is −1."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            z_all1: torch.Tensor | None = None, z_all2: torch.Tensor | None = None,
            offset: int = 0) -> torch.Tensor:
    """SimCLR's NT-Xent, averaged over this rank's 2n anchors.

    ``z1``, ``z2``: (n, d) projections of the two views of this rank's images (the anchors).
    ``z_all1``, ``z_all2``: (N, d) the same for the global batch (all ranks, rank order; default:
    ``z1``, ``z2``), whose rows ``offset .. offset + n`` are this rank's. An anchor's positive is
    the other view of its image; every other one of the 2N projections except itself is a
    negative. Cosine similarities divided by ``temperature``."""
    z_all1 = z1 if z_all1 is None else z_all1
    z_all2 = z2 if z_all2 is None else z_all2
    n, big_n = z1.shape[0], z_all1.shape[0]
    anchors = F.normalize(_wide(torch.cat([z1, z2])), dim=1)
    cands = F.normalize(_wide(torch.cat([z_all1, z_all2])), dim=1)
    logits = anchors @ cands.T / temperature                       # (2n, 2N)
    local = torch.arange(n, device=z1.device) + offset
    self_col = torch.cat([local, local + big_n])
    pos_col = torch.cat([local + big_n, local])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_col] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, pos_col)


def infonce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                       temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: logits [q·k, q·queue] / T, cross-entropy with target 0 (the positive).

    ``q``, ``k``: (n, d), L2-normalised here (``k`` gets no gradient); ``queue``: (K, d) negative
    keys, stored normalised."""
    q = F.normalize(_wide(q), dim=1)
    k = F.normalize(_wide(k.detach()), dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ _wide(queue.detach()).to(q.dtype).T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 − 2·cos(p, sg(z)), averaged over the batch (range [0, 4])."""
    return (2 - 2 * F.cosine_similarity(_wide(p), _wide(z.detach()), dim=-1)).mean()


def batch_standardize(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                      eps: float = 1e-5) -> torch.Tensor:
    """(z − mean) / sqrt(var + eps) per dimension, with the (global) batch mean and biased
    variance, as a non-affine BatchNorm in training mode computes it."""
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1n: torch.Tensor, z2n: torch.Tensor, n: int) -> torch.Tensor:
    """z1nᵀ z2n / n for standardised embeddings (rows, D) and the global batch size ``n``: on the
    full batch this is Barlow Twins' C; on one rank's rows it is that rank's share, and the shares
    sum to C."""
    return _wide(z1n).T @ _wide(z2n) / n


def barlow_twins_loss(c: torch.Tensor, lam: float = 0.005) -> torch.Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² for the cross-correlation matrix ``c`` (D, D)."""
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lam * off


def barlow_twins_single(z1: torch.Tensor, z2: torch.Tensor, lam: float = 0.005,
                        eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins on one process's whole batch: standardise each dimension over the batch,
    C = z1nᵀz2n / N, then ``barlow_twins_loss``."""
    def std(z):
        z = _wide(z)
        return batch_standardize(z, z.mean(0), z.var(0, unbiased=False), eps)

    return barlow_twins_loss(cross_correlation(std(z1), std(z2), z1.shape[0]), lam)


def rotation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rotation prediction: cross-entropy over the 4 classes 0/90/180/270°, batch mean."""
    return F.cross_entropy(_wide(logits), targets)
