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
passes), and roundings differ by a level here and there. ``tests/unit/data/test_decode_gpu.py`` bounds
the difference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

from ltscale.data.augment_plan import CONTRAST, colour_affine, eval_geometry
from ltscale.data.resample_device import apply, plan, to_device


def _host(array, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without waiting for the device (pinned, asynchronous)."""
    t = torch.as_tensor(np.asarray(array))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _resizes(images: list[torch.Tensor], plans: list):
    """Each view's resize (the ``rrc`` box, or the whole image for a ``pad`` crop), weights on
    the device in one copy."""
    resizes = []
    for img, views in zip(images, plans):
        h, w = img.shape[-2:]
        for p in views:
            resizes.append(plan(w, h, p.box or (0, 0, w, h), p.size, p.size))
    return resizes, to_device(resizes, images[0].device)


def _crop(img: torch.Tensor, p, resize, weights) -> torch.Tensor:
    view = apply(img, resize, weights)
    if p.box is not None:
        return view
    s, pad = p.size, p.padding
    if pad:
        view = nnf.pad(view, (pad, pad, pad, pad))
    x, y = p.pad_offset
    return view[:, y:y + s, x:x + s]


def _recolour(x: torch.Tensor, plans: list) -> torch.Tensor:
    """The colour map of every view that drew jitter or grayscale (Pillow's rounding)."""
    idx = [i for i, p in enumerate(plans) if p.recolours]
    if not idx:
        return x
    rows = _host(idx, x.device)
    sub = x[rows].to(torch.float32)
    means = None
    if any(k == CONTRAST for i in idx for k, _ in plans[i].colour):
        means = sub.mean(dim=(-2, -1)).double().cpu().numpy()  # one wait for the batch
    maps = []
    for j, i in enumerate(idx):
        def mean(j=j):
            m = means[j]
            return m if len(m) == 3 else np.repeat(m, 3)

        A, t = colour_affine(plans[i], mean)
        maps.append(np.hstack([A, t[:, None]]))
    maps = np.stack(maps)
    if sub.shape[1] == 1:  # Pillow's lookup table: round(a·v + b), in double precision
        ab = _host(np.stack([maps[:, 0, :3].sum(-1), maps[:, 0, 3]], 1), x.device)
        out = (sub.double() * ab[:, 0].view(-1, 1, 1, 1) + ab[:, 1].view(-1, 1, 1, 1)).round()
    else:  # Pillow's convert(matrix): float32 v + 0.5, truncated
        M = _host(maps.astype(np.float32), x.device)
        out = (torch.einsum("nij,njhw->nihw", M[:, :, :3], sub)
               + M[:, :, 3].view(-1, 3, 1, 1) + 0.5).floor()
    x = x.clone()
    x[rows] = out.clamp_(0, 255).to(torch.uint8)
    return x


def _blur(x: torch.Tensor, plans: list) -> torch.Tensor:
    """Gaussian blur of the views that drew one, each with its sigma: one separable grouped
    convolution, edges replicated (as Pillow's box passes extend the edge pixels)."""
    idx = [i for i, p in enumerate(plans) if p.blur is not None]
    if not idx:
        return x
    sigmas = np.array([plans[i].blur for i in idx], dtype=np.float64)
    r = max(1, math.ceil(3 * sigmas.max()))
    taps = np.arange(-r, r + 1)
    kernel = np.exp(-taps[None] ** 2 / (2 * sigmas[:, None] ** 2))
    kernel = _host((kernel / kernel.sum(1, keepdims=True)).astype(np.float32), x.device)
    rows = _host(idx, x.device)
    sub = x[rows].to(torch.float32)
    n, c, h, w = sub.shape
    weight = kernel.repeat_interleave(c, 0)[:, None, None, :]  # one per view and channel
    y = sub.reshape(1, n * c, h, w)
    y = nnf.conv2d(nnf.pad(y, (r, r, 0, 0), mode="replicate"), weight, groups=n * c)
    y = nnf.conv2d(nnf.pad(y, (0, 0, r, r), mode="replicate"), weight.transpose(-1, -2),
                   groups=n * c)
    x = x.clone()
    x[rows] = y.reshape(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8)
    return x


def _mask(flags: list[bool], device: torch.device) -> torch.Tensor:
    return _host(np.array(flags, dtype=bool), device).view(-1, 1, 1, 1)


def train_views(images: list[torch.Tensor], plans: list, rotations: bool) -> torch.Tensor:
    """uint8 (B, V, C, S, S) — (B, C, S, S) for one view — from each sample's decoded image
    (C, H, W) and its views' plans."""
    flat = [p for ps in plans for p in ps]
    sources = [img for img, ps in zip(images, plans) for _ in ps]
    resizes, weights = _resizes(images, plans)
    x = torch.stack([_crop(img, p, r, wt)
                     for img, p, r, wt in zip(sources, flat, resizes, weights)])
    if any(p.flip for p in flat):
        x = torch.where(_mask([p.flip for p in flat], x.device), x.flip(-1), x)
    x = _blur(_recolour(x, flat), flat)
    if any(p.solarize for p in flat):
        solarize = _mask([p.solarize for p in flat], x.device)
        x = torch.where(solarize & (x >= 128), 255 - x, x)
    if rotations:
        x = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], 1)
    x = x.reshape(len(images), -1, *x.shape[-3:])
    return x[:, 0] if x.shape[1] == 1 else x


def eval_views(images: list[torch.Tensor], spec) -> torch.Tensor:
    """uint8 (B, C, S, S): each image's shorter side resized to ``spec.resize``, centre crop."""
    s, shapes = spec.size, []
    for img in images:
        h, w = img.shape[-2:]
        shapes.append((w, h, *eval_geometry(spec, w, h)))
    resizes = [plan(w, h, (0, 0, w, h), nw, nh) for w, h, nw, nh, _, _ in shapes]
    weights = to_device(resizes, images[0].device)
    return torch.stack([apply(img, r, wt)[:, y:y + s, x:x + s] for img, r, wt, (*_, x, y)
                        in zip(images, resizes, weights, shapes)])
