"""FASSL's loss maths (Lin, Chen, Wang, *Frequency-Aware Self-Supervised Long-Tailed Learning*).

Stage one contrasts *similarity distributions* h = P·z (Eq. 1) instead of the features z, so that
K learned prototypes (rows of P) come to describe the long-tailed data. Stage two weights each
sample's student/teacher consistency by how dissimilar its teacher feature is to all prototypes
(Eq. 3): frequent-class samples resemble many prototypes and get small weights, rare ones large.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltscale.losses.ssl import _wide, nt_xent


def similarity_distributions(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 1: h_i = P·z_i for features ``z`` (n, D) and prototypes (K, D); returns (n, K)."""
    return z @ prototypes.T


def prototype_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, prototypes: torch.Tensor,
                               beta: float = 0.2, z_all1: torch.Tensor | None = None,
                               z_all2: torch.Tensor | None = None,
                               offset: int = 0) -> torch.Tensor:
    """Eq. 2: NT-Xent over the similarity distributions of the two views, cosine similarities
    divided by the temperature β (0.2 in the paper). ``z_all1``/``z_all2`` and ``offset`` are the
    global batch and this rank's rows in it, as for ``nt_xent``; gradients reach the features and
    the prototypes."""
    h1 = similarity_distributions(z1, prototypes)
    h2 = similarity_distributions(z2, prototypes)
    h_all1 = h1 if z_all1 is None else similarity_distributions(z_all1, prototypes)
    h_all2 = h2 if z_all2 is None else similarity_distributions(z_all2, prototypes)
    return nt_xent(h1, h2, beta, h_all1, h_all2, offset=offset)


def prototype_similarity_sums(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """s_i = Σ_k ⟨z_i, p_k⟩, the exponent of Eq. 3's weight φ(z_i, P) = 1 / exp(s_i)."""
    return similarity_distributions(z, prototypes).sum(1)


@torch.no_grad()
def frequency_weights(z: torch.Tensor, prototypes: torch.Tensor,
                      clip: float = 3.0) -> torch.Tensor:
    """Eq. 3's per-sample weights φ = exp(−s_i), made usable as the paper's §4.2 says ("clip
    outliers and normalize the weights in each mini-batch"): the log-weights −s_i are clipped to
    their batch mean ± ``clip`` standard deviations (``clip`` 0: no clipping; the paper gives no
    value), then the weights are divided by their batch mean, so they average 1 and keep
    φ's ratios. ``z`` (n, D) are teacher features; no gradient flows through the weights."""
    a = -prototype_similarity_sums(_wide(z), _wide(prototypes))
    if clip > 0 and a.numel() > 1:
        mean, std = a.mean(), a.std(unbiased=False)
        a = torch.minimum(torch.maximum(a, mean - clip * std), mean + clip * std)
    return torch.softmax(a, dim=0) * a.numel()  # exp(a_i) / mean_j exp(a_j), overflow-free


def consistency_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 3's L_consis per sample: ‖p/‖p‖ − z/‖z‖‖², the teacher's ``z`` without gradient."""
    p = F.normalize(_wide(p), dim=-1)
    z = F.normalize(_wide(z.detach()), dim=-1)
    return (p - z).pow(2).sum(-1)


def rebalanced_loss(p: torch.Tensor, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 3's L_reb: the batch mean of weight_i · L_consis(p_i, z_i) (student predictions ``p``,
    teacher features ``z``, weights from ``frequency_weights``)."""
    per_sample = consistency_loss(p, z)
    return (weights.detach().to(per_sample.dtype) * per_sample).mean()
