"""Train a head on cached features (frozen-encoder fine-tuning).

Seed 000 §2.3: Adam, 10 epochs, lr 0.003, batch 256, no weight decay, cosine-decayed here. Each
epoch's samples come from the shared ``EpochSampler`` (``balance``: instance, class, sqrt or
progressive), and, with augmented copies in the cache, each drawn sample uses one of its
``V = 1 + aug_copies`` cached versions at random.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ltscale.core.errors import RecipeError
from ltscale.core.progress import bar
from ltscale.data.sampling import EpochSampler

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise RecipeError("fine-tuning: the head has no trainable parameters")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise RecipeError(f"unknown fine-tuning optimizer {name!r}; choose one of "
                      f"{', '.join(OPTIMIZERS)}")


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in module.modules())


def _rows(features, versions: np.ndarray | None, idx: np.ndarray) -> torch.Tensor:
    """Rows ``idx`` of ``features`` ((V, n, D) array or tensor), version ``versions[i]`` each."""
    if isinstance(features, torch.Tensor):
        v = 0 if versions is None else torch.from_numpy(versions)
        return features[v, torch.from_numpy(idx)].float()
    order = np.argsort(idx, kind="stable")  # ascending reads from a memory map
    out = np.empty((len(idx), features.shape[2]), dtype=np.float32)
    v = np.zeros(len(idx), dtype=np.int64) if versions is None else versions
    out[order] = features[v[order], idx[order]]
    return torch.from_numpy(out)


def train_head(head: nn.Module, features, labels, *, loss_fn: nn.Module, epochs: int,
               batch_size: int, lr: float, weight_decay: float = 0.0, optimizer: str = "adam",
               balance: str = "instance", seed: int = 0, device="cpu", tracker=None,
               progress: bool = True, metric: str = "head/loss",
               desc: str = "head") -> tuple[nn.Module, list[dict]]:
    """Train ``head``'s trainable parameters on ``features`` ((V, n, D): V cached versions of n
    samples; a memory map or a tensor) with ``labels`` (n,).

    Returns the head (in eval mode) and one history record per epoch: mean loss, training
    accuracy on the drawn samples, and ``seen`` (how many samples of each class were drawn)."""
    labels_np = np.asarray(labels, dtype=np.int64)
    n, versions = features.shape[1], features.shape[0]
    if n != len(labels_np):
        raise ValueError(f"{n} cached rows but {len(labels_np)} labels")
    num_classes = int(getattr(loss_fn, "num_classes", labels_np.max() + 1))
    head = head.to(device)
    loss_fn = loss_fn.to(device)
    opt = make_optimizer(head.parameters(), optimizer, lr, weight_decay)
    sampler = EpochSampler(n, batch_size=batch_size, seed=seed, shuffle="global", tail="keep",
                           balance=balance, labels=labels_np, epochs=epochs)
    steps = epochs * sampler.batches_per_epoch()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    y_all = torch.from_numpy(labels_np)
    history = []
    for epoch in bar(range(epochs), desc=desc, enabled=progress):
        sampler.set_epoch(epoch)
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch, epochs)
        rng = np.random.default_rng([seed, epoch, 7])
        head.train()
        total, correct, count, steps_done = 0.0, 0, 0, 0
        seen = np.zeros(num_classes, dtype=np.int64)
        for batch in sampler.batches():
            idx = batch.positions
            if len(idx) < 2 and _has_batchnorm(head):
                continue  # a batch of one has no batch statistics
            v = rng.integers(0, versions, len(idx)) if versions > 1 else None
            x = _rows(features, v, idx).to(device)
            y = y_all[idx].to(device)
            logits = head(x)
            loss = loss_fn(logits, y).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss.item()} at epoch {epoch}; lower "
                                         "finetune.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps_done += 1
            total += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
            count += len(idx)
            seen += np.bincount(labels_np[idx], minlength=num_classes)
        record = {"epoch": epoch + 1, "loss": total / max(1, count),
                  "accuracy": correct / max(1, count), "seen": seen.tolist(),
                  "images": count, "steps": steps_done}
        history.append(record)
        if tracker is not None:
            tracker.log_metrics({metric: record["loss"],
                                 metric.replace("loss", "accuracy"): record["accuracy"]},
                                step=epoch + 1)
    head.eval()
    return head, history


@torch.no_grad()
def predict(head: nn.Module, features, batch_size: int = 4096, device="cpu",
            version: int = 0) -> torch.Tensor:
    """Logits of ``head`` for version ``version`` of every cached row."""
    head = head.eval().to(device)
    n = features.shape[1]
    outs = []
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        v = np.full(len(idx), version, dtype=np.int64)
        outs.append(head(_rows(features, v, idx).to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def transform(module: nn.Module, features, batch_size: int = 4096, device="cpu") -> torch.Tensor:
    """``module`` (eval mode) applied to every version of every cached row: (V, n, D') in
    float16, like the cache it came from."""
    module = module.eval().to(device)
    out = None
    for v in range(features.shape[0]):
        z = predict(module, features, batch_size, device, v)
        if out is None:
            out = torch.empty((features.shape[0], *z.shape), dtype=torch.float16)
        out[v] = z
    return out


@torch.no_grad()
def superloss_confidence(head: nn.Module, features, labels, loss_fn: nn.Module,
                         batch_size: int = 4096, device="cpu") -> np.ndarray | None:
    """σ* of every cached training sample under the trained head (version 0: the clean view),
    or None when the loss is not a SuperLoss (``loss_fn.confidence`` stays None)."""
    if not hasattr(loss_fn, "confidence"):
        return None
    logits = predict(head, features, batch_size, device)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    was_training = loss_fn.training
    loss_fn.eval()  # a running-mean threshold is not updated by this pass
    out = []
    try:
        for s in range(0, len(y), batch_size):
            loss_fn(logits[s:s + batch_size].to(device), y[s:s + batch_size].to(device))
            if loss_fn.confidence is None:
                return None
            out.append(loss_fn.confidence.detach().float().cpu())
    finally:
        loss_fn.train(was_training)
    return torch.cat(out).numpy() if out else None
