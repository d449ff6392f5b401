"""Train a classifier head on cached features with a (noise-, imbalance-robust) loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from ltscale.progress import bar

from ltscale.losses.registry import classification_loss


def log_prior(class_counts) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64).clamp_min(1)
    return torch.log(counts / counts.sum()).float()


def train_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, class_counts,
               *, loss: str, loss_options: dict, epochs: int, batch_size: int, lr: float,
               weight_decay: float, seed: int, progress: bool = True,
               tracker=None) -> tuple[nn.Module, list[dict]]:
    """Adam on a linear head (seed 000: 10 epochs, lr 0.003, batch 256). Features are
    standardised with statistics of the training features, folded into the returned head."""
    g = torch.Generator().manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    linear = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=g)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = classification_loss(loss, class_counts, **loss_options)
    history = []
    steps_per_epoch = -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for epoch in bar(range(epochs), desc="head", enabled=progress):
        loss_fn.set_epoch(epoch, epochs)
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for idx in order.split(batch_size):
            batch_loss = loss_fn(linear(x[idx]), labels[idx]).mean()
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            sched.step()
            total += float(batch_loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / len(x)})
        if tracker is not None:
            tracker.log_metrics({"head/loss": total / len(x)}, step=epoch + 1)
    # fold the standardisation into the head so it applies to raw features
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(linear.weight / std)
        head.bias.copy_(linear.bias - (linear.weight * (mean / std)).sum(1))
    return head, history
