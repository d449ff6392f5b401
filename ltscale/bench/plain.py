"""A plain PyTorch reference for supervised training from scratch: what a competent user writes
in an afternoon, used only by ``ltscale bench baseline`` to check that ltscale's supervised path
is as strong as it.

Deliberately independent of ltscale's engine, loaders, augmentation and losses: the images of the
manifest are decoded once into memory, augmented on whole batch tensors (random crop after zero
padding, horizontal flip), and trained by a hand-written loop (torchvision ResNet with a
``in_chans``-channel stem, SGD with momentum, OneCycle or warm-up + cosine, cross-entropy or
logit-adjusted cross-entropy with the observed-label prior). Only the data (index + manifest) is
shared, so both sides train on the same samples and labels.

Each knob is a field of ``PlainSettings`` so that the benchmark can ablate one factor at a time.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import resnet

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest
from ltscale.data.pixels import to_mode
from ltscale.data.reader import IndexedReader


@dataclass(frozen=True)
class PlainSettings:
    network: str = "resnet18"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1                 # peak learning rate (no batch scaling)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_bias: bool = True    # weight decay on BN parameters and biases as well
    schedule: str = "onecycle"      # onecycle | cosine (linear warm-up, then cosine to 0)
    warmup: float = 0.3             # share of the steps spent warming up
    cycle_momentum: bool = True     # onecycle: momentum 0.95 → 0.85 → 0.95 against the lr
    padding: int = 2                # zero padding before the random crop
    flip: bool = True
    loss: str = "la"                # ce | la (logit-adjusted, τ = 1, observed-label prior)
    drop_last: bool = False
    seed: int = 0


@dataclass(frozen=True)
class PlainData:
    train_x: torch.Tensor   # uint8 (N, C, H, W)
    train_y: torch.Tensor   # observed labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _decode(reader: IndexedReader, rows: np.ndarray, channels: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    out = []
    for data in reader.read_many(rows):
        arr = np.array(to_mode(Image.open(io.BytesIO(data)), mode))
        out.append(torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def load_data(shards: str, manifest: Manifest, test_rows: np.ndarray, channels: int,
              mean, std) -> PlainData:
    """The manifest's labeled images with their observed labels, and the test rows, in memory."""
    index = ShardIndex.load(shards)
    reader = IndexedReader(index)
    ids, observed = manifest.rows("labeled")
    return PlainData(_decode(reader, np.asarray(ids), channels), torch.as_tensor(observed),
                     _decode(reader, np.asarray(test_rows), channels),
                     torch.as_tensor(index.label[test_rows]), index.num_classes,
                     tuple(mean), tuple(std))


def network(name: str, in_chans: int, num_classes: int) -> nn.Module:
    model = getattr(resnet, name)(weights=None, num_classes=num_classes)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model


def augment(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, on a uint8 batch."""
    n, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding,) * 4)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        x = torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = torch.rand(n, generator=g) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def _optimizer(model: nn.Module, s: PlainSettings) -> torch.optim.Optimizer:
    if s.decay_norm_bias:
        groups = [{"params": list(model.parameters())}]
    else:
        groups = [{"params": [p for p in model.parameters() if p.ndim > 1]},
                  {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                           weight_decay=s.weight_decay)


def _schedule(opt, s: PlainSettings, total: int):
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=total,
                                                   pct_start=s.warmup,
                                                   cycle_momentum=s.cycle_momentum)
    warm = int(s.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_and_test(data: PlainData, s: PlainSettings) -> dict:
    """Train on ``data`` with settings ``s``; returns test top-1 (the test set's mean per-class
    accuracy as well), images per second and seconds."""
    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed)
    model = network(s.network, data.train_x.shape[1], data.num_classes)
    opt = _optimizer(model, s)
    n = len(data.train_y)
    steps = n // s.batch_size if s.drop_last else -(-n // s.batch_size)
    sched = _schedule(opt, s, s.epochs * steps)
    counts = torch.bincount(data.train_y, minlength=data.num_classes).clamp_min(1).float()
    adjust = (counts / counts.sum()).log() if s.loss == "la" else torch.zeros(data.num_classes)
    t0, seen = time.perf_counter(), 0
    model.train()
    for _ in range(s.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(steps):
            idx = order[i * s.batch_size:(i + 1) * s.batch_size]
            x = _normalise(augment(data.train_x[idx], s.padding, s.flip, g), data.mean, data.std)
            loss = F.cross_entropy(model(x) + adjust, data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_normalise(data.test_x[i:i + 512], data.mean, data.std)).argmax(1)
                          for i in range(0, len(data.test_y), 512)])
    hit = (pred == data.test_y).float()
    per_class = torch.stack([hit[data.test_y == c].mean() for c in range(data.num_classes)
                             if (data.test_y == c).any()])
    return {"top1": float(hit.mean()), "balanced_acc": float(per_class.mean()),
            "images_per_s": seen / seconds, "seconds": seconds, "steps": s.epochs * steps,
            "images_seen": seen}
