"""The views of ``data.loader.decode: gpu``, made from decoded uint8 tensors on the training device.

The plans come from the loader workers (``augment_plan.draw_views``, the Pillow path's draws);
this module applies them in the Pillow path's order, each step rounded back to uint8 as Pillow's
images are:

- geometry, per view: ``rrc`` crop box resized to ``size``; ``pad``: resize to ``size``, zero
  padding, the drawn offset; evaluation: shorter side to ``resize``, centre crop — all with
  Pillow's bilinear filter (antialiased when downscaling, reading around the box as Pillow does:
  ``resample_device``);
- then on the stacked views of the batch at once: flip (a mask); the colour map of
  ``augment_plan.colour_affine`` (one batched 3×4 matrix product; the means that contrast pivots
  on are computed here and fetched once per batch, as the map is composed on the host); Gaussian
  blur (one separable grouped convolution, each view its own sigma, edges replicated);
  solarize (≥ 128 inverted); rotations (0/90/180/270°).

Not bit-identical to the Pillow path: the image is decoded at full size (Pillow decodes JPEGs at
reduced DCT size when every crop allows), the blur is an exact Gaussian (Pillow: three box
passes), and roundings differ by a level here and there. ``tests/unit/test_decode_gpu.py`` bounds
the difference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

from ltscale.data.augment_plan import CONTRAST, colour_affine, eval_geometry
from ltscale.data.resample_device import resample


def _crop(img: torch.Tensor, plan) -> torch.Tensor:
    s = plan.size
    if plan.box is not None:
        return resample(img, plan.box, s, s)
    h, w = img.shape[-2:]
    img = resample(img, (0, 0, w, h), s, s)
    p = plan.padding
    if p:
        img = nnf.pad(img, (p, p, p, p))
    x, y = plan.pad_offset
    return img[:, y:y + s, x:x + s]


def _recolour(x: torch.Tensor, plans: list) -> torch.Tensor:
    """The colour map of every view that drew jitter or grayscale (Pillow's rounding)."""
    idx = [i for i, p in enumerate(plans) if p.recolours]
    if not idx:
        return x
    sub = x[idx].to(torch.float32)
    means = None
    if any(k == CONTRAST for i in idx for k, _ in plans[i].colour):
        means = sub.mean(dim=(-2, -1)).double().cpu().numpy()  # one sync for the batch
    maps = []
    for j, i in enumerate(idx):
        def mean(j=j):
            m = means[j]
            return m if len(m) == 3 else np.repeat(m, 3)

        A, t = colour_affine(plans[i], mean)
        maps.append(np.hstack([A, t[:, None]]))
    M = torch.as_tensor(np.stack(maps), dtype=torch.float32, device=x.device)
    if sub.shape[1] == 1:  # Pillow's lookup table: round(a·v + b)
        a, b = M[:, 0, :3].sum(-1), M[:, 0, 3]
        out = (sub * a.view(-1, 1, 1, 1) + b.view(-1, 1, 1, 1)).round()
    else:  # Pillow's convert(matrix): v + 0.5 truncated
        out = (torch.einsum("nij,njhw->nihw", M[:, :, :3], sub)
               + M[:, :, 3].view(-1, 3, 1, 1) + 0.5).floor()
    x = x.clone()
    x[idx] = out.clamp_(0, 255).to(torch.uint8)
    return x


def _blur(x: torch.Tensor, plans: list) -> torch.Tensor:
    idx = [i for i, p in enumerate(plans) if p.blur is not None]
    if not idx:
        return x
    sigma = torch.tensor([plans[i].blur for i in idx], dtype=torch.float32, device=x.device)
    r = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)           # (M, 2r + 1)
    sub = x[idx].to(torch.float32)
    n, c, h, w = sub.shape
    weight = kernel.repeat_interleave(c, 0)[:, None, None, :]  # one per view and channel
    y = sub.reshape(1, n * c, h, w)
    y = nnf.conv2d(nnf.pad(y, (r, r, 0, 0), mode="replicate"), weight, groups=n * c)
    y = nnf.conv2d(nnf.pad(y, (0, 0, r, r), mode="replicate"), weight.transpose(-1, -2),
                   groups=n * c)
    x = x.clone()
    x[idx] = y.reshape(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8)
    return x


def train_views(images: list[torch.Tensor], plans: list, rotations: bool) -> torch.Tensor:
    """uint8 (B, V, C, S, S) — (B, C, S, S) for one view — from each sample's decoded image
    (C, H, W) and its views' plans."""
    flat = [p for ps in plans for p in ps]
    x = torch.stack([_crop(img, p) for img, ps in zip(images, plans) for p in ps])
    if any(p.flip for p in flat):
        flip = torch.tensor([p.flip for p in flat], device=x.device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    x = _blur(_recolour(x, flat), flat)
    if any(p.solarize for p in flat):
        solarize = torch.tensor([p.solarize for p in flat], device=x.device).view(-1, 1, 1, 1)
        x = torch.where(solarize & (x >= 128), 255 - x, x)
    if rotations:
        x = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], 1)
    x = x.reshape(len(images), -1, *x.shape[-3:])
    return x[:, 0] if x.shape[1] == 1 else x


def eval_views(images: list[torch.Tensor], spec) -> torch.Tensor:
    """uint8 (B, C, S, S): each image's shorter side resized to ``spec.resize``, centre crop."""
    out, s = [], spec.size
    for img in images:
        h, w = img.shape[-2:]
        nw, nh, x, y = eval_geometry(spec, w, h)
        img = resample(img, (0, 0, w, h), nw, nh)
        out.append(img[:, y:y + s, x:x + s])
    return torch.stack(out)
