"""The torch backend's augmentation: presets applied with Pillow, one decode per sample.

Why Pillow and not tensor ops: on CPU, Pillow's C kernels for crop+resize (with antialiasing),
enhancement, blur and HSV conversion are faster than the equivalent tensor ops on uint8 images
of this size, and they let the decoder work at reduced size. The crop of every view is drawn
*before* decoding, from the image header's size; a JPEG is then decoded with libjpeg's DCT scaling
(``Image.draft``, 1/2, 1/4 or 1/8) to the smallest size that still gives every crop at least the
output resolution, and all views are cut from that one decode (decode once, crop V times).

Randomness comes from a ``numpy`` generator per sample, seeded by the sampler from (seed, epoch,
global slot): a sample's views do not depend on the worker that makes them, so runs are
reproducible with any number of workers and a resumed run draws the same views.

Outputs are uint8 tensors (C, H, W); the loader converts to float and normalises after the batch
has reached its device (a quarter of the bytes through worker queues and host-to-device copies).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, ImageStat

from ltscale.data.augment import AugmentPreset, EvalSpec, ViewSpec
from ltscale.data.pixels import to_mode


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded image (header read only)."""
    return Image.open(io.BytesIO(data))


def _crop_box(spec: ViewSpec, w: int, h: int, rng: np.random.Generator):
    """(left, top, right, bottom) in original pixels, as torchvision's RandomResizedCrop draws it."""
    area = w * h
    lo_r, hi_r = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*spec.crop_scale)
        ratio = math.exp(rng.uniform(lo_r, hi_r))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    ratio = w / h  # fallback: the largest centred crop within the ratio range
    if ratio < spec.crop_ratio[0]:
        cw, ch = w, round(w / spec.crop_ratio[0])
    elif ratio > spec.crop_ratio[1]:
        cw, ch = round(h * spec.crop_ratio[1]), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def _draft(img: Image.Image, mode: str, need_w: float, need_h: float) -> float:
    """Ask a JPEG to decode at the smallest DCT scale ≥ (need_w, need_h); returns the factor the
    image shrank by (1.0 for other formats or when no reduction is possible)."""
    if img.format != "JPEG":
        return 1.0
    w, h = img.size
    img.draft(mode, (max(1, math.ceil(need_w)), max(1, math.ceil(need_h))))
    return w / img.size[0]


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """16-bit scaled, not clipped; alpha dropped; float and 32-bit refused (``data.pixels``)."""
    return to_mode(img, mode)


_LUMA = np.array([0.299, 0.587, 0.114])
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def _hue_matrix(turns: float) -> np.ndarray:
    """Rotate the chroma (I, Q) plane of YIQ by ``turns`` of a full circle (as DALI's hue)."""
    c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    return _YIQ_INV @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _YIQ


def _colour(img: Image.Image, spec: ViewSpec, rng: np.random.Generator, jitter: bool,
            gray: bool) -> Image.Image:
    """Colour jitter (brightness, contrast, saturation, hue in a random order, as torchvision's
    ColorJitter) and grayscale, composed into one affine colour map applied in a single pass.

    Each op is affine in RGB — brightness scales, contrast blends with the mean grey, saturation
    blends with the pixel's luma, hue rotates the YIQ chroma plane — so their composition is one
    3×4 matrix (``Image.convert(matrix=…)`` in C, instead of four image passes and an HSV round
    trip). Differences to applying the ops one by one: no clipping between ops, and hue is a YIQ
    rotation rather than an HSV shift (the same definition DALI's ``hsv``/``color_twist`` use).
    """
    A, t = np.eye(3), np.zeros(3)
    if jitter:
        mean = None
        for k in rng.permutation(4):
            strength = spec.jitter[k]
            if strength <= 0 or (k >= 2 and img.mode != "RGB"):
                continue
            if k == 3:
                H = _hue_matrix(rng.uniform(-strength, strength))
                A, t = H @ A, H @ t
                continue
            f = rng.uniform(max(0.0, 1 - strength), 1 + strength)
            if k == 0:
                A, t = f * A, f * t
            elif k == 1:
                if mean is None:
                    mean = np.array(ImageStat.Stat(img).mean[:3] if img.mode == "RGB"
                                    else ImageStat.Stat(img).mean * 3)
                grey = float(_LUMA @ (A @ mean + t))
                A, t = f * A, f * t + (1 - f) * grey
            else:
                S = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _LUMA)
                A, t = S @ A, S @ t
    if gray:
        G = np.outer(np.ones(3), _LUMA)
        A, t = G @ A, G @ t
    if img.mode == "L":  # one channel: brightness and contrast only, as a lookup table
        a, b = float(A[0].sum()), float(t[0])
        return img.point([min(255, max(0, round(a * v + b))) for v in range(256)])
    matrix = tuple(float(x) for row in np.hstack([A, t[:, None]]) for x in row)
    return img.convert("RGB", matrix)


def _finish(img: Image.Image, spec: ViewSpec, rng: np.random.Generator) -> Image.Image:
    if spec.flip and rng.random() < spec.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    jitter = bool(spec.jitter_p) and rng.random() < spec.jitter_p
    gray = bool(spec.grayscale_p) and rng.random() < spec.grayscale_p and img.mode == "RGB"
    if jitter or gray:
        img = _colour(img, spec, rng, jitter, gray)
    if spec.blur_p and rng.random() < spec.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*spec.blur_sigma)))
    if spec.solarize_p and rng.random() < spec.solarize_p:
        img = ImageOps.solarize(img, threshold=128)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (C, H, W) without a float round trip."""
    arr = np.array(img)  # a writable copy of Pillow's buffer
    if arr.ndim == 2:
        return torch.from_numpy(arr)[None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class TrainViews:
    """bytes → uint8 tensor (V, C, H, W) of the preset's views (rotations expanded)."""

    def __init__(self, preset: AugmentPreset, channels: int):
        self.preset, self.mode = preset, ("L" if channels == 1 else "RGB")
        self.outputs = preset.outputs

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        img = open_image(data)
        w, h = img.size
        boxes = []
        for spec in self.preset.views:
            if spec.crop == "rrc":
                boxes.append(_crop_box(spec, w, h, rng))
            else:
                boxes.append(None)
        # the crop with the fewest pixels per output pixel decides how far the decode may shrink
        scale = min((min(b[2] - b[0], b[3] - b[1]) / spec.size
                     for b, spec in zip(boxes, self.preset.views) if b), default=1.0)
        if all(boxes):
            shrink = _draft(img, self.mode, w / scale, h / scale) if scale > 1 else 1.0
        else:
            shrink = 1.0
        img = _to_mode(img, self.mode)
        views = []
        for spec, box in zip(self.preset.views, boxes):
            if box is None:
                view = self._pad_crop(img, spec, rng)
            else:
                fbox = tuple(v / shrink for v in box)
                view = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=fbox)
            view = to_tensor(_finish(view, spec, rng))
            if self.preset.rotations:
                views.extend(torch.rot90(view, k, dims=(1, 2)) for k in range(4))
            else:
                views.append(view)
        return torch.stack(views)

    @staticmethod
    def _pad_crop(img: Image.Image, spec: ViewSpec, rng: np.random.Generator) -> Image.Image:
        if img.size != (spec.size, spec.size):
            img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        p = spec.padding
        if p:
            img = ImageOps.expand(img, border=p, fill=0)
        x, y = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
        return img.crop((x, y, x + spec.size, y + spec.size))


class EvalView:
    """bytes → uint8 tensor (C, H, W): shorter side to ``resize``, centre crop ``size``."""

    outputs = 1

    def __init__(self, spec: EvalSpec, channels: int):
        self.spec, self.mode = spec, ("L" if channels == 1 else "RGB")

    def __call__(self, data: bytes, rng=None) -> torch.Tensor:
        img = open_image(data)
        w, h = img.size
        r = self.spec.resize
        nw, nh = (r, round(h * r / w)) if w <= h else (round(w * r / h), r)
        if (w, h) != (nw, nh):
            _draft(img, self.mode, nw, nh)
            img = _to_mode(img, self.mode).resize((nw, nh), Image.Resampling.BILINEAR)
        else:
            img = _to_mode(img, self.mode)
        s = self.spec.size
        x, y = (nw - s) // 2, (nh - s) // 2
        if (x, y) != (0, 0) or (nw, nh) != (s, s):
            img = img.crop((x, y, x + s, y + s))
        return to_tensor(img)
