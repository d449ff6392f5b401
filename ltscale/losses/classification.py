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


# --- re-weighting and margin losses (baselines of Yang & Xu 2020, seeds 001/002, Table 2) ---

def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 1.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss −α_y·(1 − p_y)^γ·log p_y (Lin et al. 2017); γ = 0 and no weight is plain CE.

    ``weight`` is an optional per-class α (shape (C,)), indexed by the target."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    # 1 − p_t via expm1 (accurate when p_t ≈ 1); the floor keeps the gradient of (·)^γ finite
    # for γ < 1 when p_t rounds to exactly 1
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -(one_minus_pt ** gamma) * log_pt if gamma != 0 else -log_pt
    if weight is not None:
        loss = loss * weight.to(loss)[targets]
    return loss


def class_balanced_weights(counts, beta: float = 0.9999) -> torch.Tensor:
    """Per-class weights w_c ∝ 1/E_{n_c}, E_n = (1 − β^n)/(1 − β) the effective number of samples
    (Cui et al. 2019, class-balanced loss), normalised so that Σ_c w_c = C.

    β = 0 gives all-ones weights (no re-weighting); β → 1 tends to inverse frequency (β = 1 is
    accepted and uses E_n = n). A class with no samples has E_0 = 0: it gets weight 0 (it can
    never be a training target) and the remaining weights still sum to C. Returns float32."""
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"class-balanced beta must lie in [0, 1], got {beta}")
    if (n < 0).any():
        raise ValueError("class counts must be non-negative")
    if beta == 1.0:
        effective = n.clone()
    else:
        effective = -torch.expm1(n * math.log(beta)) / (1.0 - beta) if beta > 0 else (n > 0).double()
    present = effective > 0
    if not present.any():
        raise ValueError("class-balanced weights need at least one class with samples")
    w = torch.zeros_like(n)
    w[present] = 1.0 / effective[present]
    return (w * (len(n) / w.sum())).float()


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy scaled by the target's class weight, w_y·CE.

    Note: the mean of this is Σ w_y·CE / B, whereas ``F.cross_entropy(weight=w)`` averages with
    Σ w_y in the denominator; the per-sample form leaves that choice to the caller (the losses'
    ``reduction`` option, ``losses/base.py: ClassificationLoss.weigh``)."""
    return cross_entropy(logits, targets) * weight.to(logits)[targets]


def ldam_margins(counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM per-class margins m_c ∝ n_c^(−1/4), scaled so that the largest is ``max_margin``
    (Cao et al. 2019). Classes with no samples get ``max_margin`` (they never occur as
    targets) and do not take part in the scaling. Returns float32."""
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    present = n > 0
    if not present.any():
        raise ValueError("LDAM margins need at least one class with samples")
    m = torch.full_like(n, float(max_margin))
    raw = n[present] ** -0.25
    m[present] = raw * (max_margin / raw.max())
    return m.float()


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor,
              scale: float = 30.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """LDAM: cross-entropy on s·(z − m_y·onehot(y)) (Cao et al. 2019), optionally
    weighted per class (the DRW stage).

    LDAM is meant for cosine-like logits in [−1, 1] (a classifier with normalised features and
    weights), which is why it rescales by s (30 in Cao et al.); this function only applies the
    formula, so with an unnormalised linear head ``scale`` should be lowered accordingly."""
    adjusted = logits - F.one_hot(targets, logits.shape[1]).to(logits) * margins.to(logits)[targets, None]
    loss = cross_entropy(scale * adjusted, targets)
    if weight is not None:
        loss = loss * weight.to(loss)[targets]
    return loss


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, counts) -> torch.Tensor:
    """Balanced Softmax (Ren et al. 2020): cross-entropy on z + log n_c.

    Since log π_c = log n_c − log Σn, this equals the logit-adjusted loss with τ = 1 exactly (the
    softmax is invariant to the per-sample constant shift log Σn). Empty classes are counted as 1,
    as for the log prior, so that no logit becomes −∞."""
    n = torch.as_tensor(counts, dtype=torch.float64, device=logits.device).clamp_min(1)
    return cross_entropy(logits + n.log().to(logits.dtype), targets)


def posthoc_logit_adjustment(logits: torch.Tensor, log_prior: torch.Tensor,
                             tau: float = 1.0) -> torch.Tensor:
    """Prediction-time logit adjustment z − τ·log π (Menon et al. 2021): the argmax of the
    result is the balanced-error prediction for a model trained with plain CE."""
    return logits - tau * log_prior.to(logits)


class RunningMean:
    """Exponential moving average of the batch-mean loss, used as the SuperLoss threshold τ when
    ``tau_sl="mean"`` (Castells et al. 2020 use such a running average, momentum 0.9).

    The first update sets the value to the batch mean; later ones mix with ``momentum``."""

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"running-mean momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.value: float | None = None

    def update(self, batch_mean: float | torch.Tensor) -> float:
        x = float(batch_mean.detach()) if isinstance(batch_mean, torch.Tensor) else float(batch_mean)
        self.value = x if self.value is None else self.momentum * self.value + (1 - self.momentum) * x
        return self.value

    def reset(self) -> None:
        self.value = None
