"""Image views: the SSL two-view augmentation and the deterministic evaluation view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ViewSpec:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    jitter: float = 0.4      # brightness/contrast strength, applied with probability 0.8
    blur: bool = False


def ssl_view(spec: ViewSpec) -> v2.Compose:
    ops = [v2.RandomResizedCrop(spec.size, scale=spec.crop_scale, antialias=True)]
    if spec.flip:
        ops.append(v2.RandomHorizontalFlip())
    if spec.jitter > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(spec.jitter, spec.jitter)], p=0.8))
    if spec.blur:
        ops.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(ops)


def eval_view(spec: ViewSpec) -> v2.Compose:
    ops = []
    ops += [v2.Resize(spec.size, antialias=True), v2.CenterCrop(spec.size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(ops)


class TwoViews:
    """Apply the same random augmentation independently twice."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return torch.stack([self.transform(img), self.transform(img)])
