"""Fine-tuning losses, per sample (reduction is the caller's choice)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ltscale.losses.lambertw import lambertw


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def logit_adjusted_loss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor,
                        tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy on logits + τ·log π (Menon et al.; seed 000 eq. 1–2). At test time the raw
    logits are used, which makes the prediction balanced across classes."""
    return F.cross_entropy(logits + tau * log_prior.to(logits), targets, reduction="none")


def superloss_confidence(loss: torch.Tensor, tau: float | torch.Tensor, lam: float) -> torch.Tensor:
    """Closed-form optimal confidence σ* = exp(−W0(½·max(−2/e, (ℓ − τ)/λ))) (seed 000 eq. 4)."""
    beta = (loss.detach() - tau) / lam
    return torch.exp(-lambertw(0.5 * beta.clamp_min(-2.0 / math.e)))


def superloss(loss: torch.Tensor, tau: float | torch.Tensor, lam: float) -> torch.Tensor:
    """SuperLoss (ℓ − τ)·σ* + λ·(log σ*)² with σ* at its closed-form optimum (seed 000 eq. 3).

    σ* is treated as a constant: it minimises the expression for the current ℓ, so the gradient
    with respect to the network is σ*·∂ℓ (easy samples count more, hard, likely noisy, ones less).
    """
    sigma = superloss_confidence(loss, tau, lam)
    return (loss - tau) * sigma + lam * torch.log(sigma) ** 2


def la_superloss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor,
                 tau_la: float = 1.0, tau_sl: float | None = None, lam: float = 4.0) -> torch.Tensor:
    """SuperLoss over the logit-adjusted per-sample loss; τ_SL defaults to log C."""
    tau_sl = math.log(logits.shape[1]) if tau_sl is None else tau_sl
    return superloss(logit_adjusted_loss(logits, targets, log_prior, tau_la), tau_sl, lam)
