"""Every random draw of a training view, and the geometry of an evaluation view, as plain data.

Both ways of making views go through here: the Pillow path (``augment_torch``, decode in the
loader workers) and the device path (``data.loader.decode: gpu``: the workers draw the plans,
the training process decodes and applies them, ``augment_device``). ``draw_views`` is the one
place that consumes a sample's generator, so both paths draw the same crops, flips, colour
factors, blur sigmas and solarize coins from the same per-sample seed — in this order: the crop
box of every ``rrc`` view (from the image header's size, before decoding), then for each view
its padding offset (``pad`` crop), flip, jitter coin, grayscale coin, the jitter order and
factors, blur coin and sigma, solarize coin.

``colour_affine`` turns a view's jitter ops and grayscale into one affine colour map (3×3 matrix
and offset), the same arithmetic on both paths; contrast pivots on the view's mean grey, which
the caller provides (it depends on the cropped pixels, not on the generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ltscale.data.augment import AugmentPreset, EvalSpec, ViewSpec

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewPlan:
    """One view's random parameters.

    ``box``: the ``rrc`` crop (left, top, right, bottom) in source pixels, None for a ``pad``
    crop, whose view is the image resized to ``size``, zero-padded by ``padding`` and cut at
    ``pad_offset`` (x, y). ``colour``: the jitter ops in the order drawn, (op, value) with op one
    of BRIGHTNESS, CONTRAST, SATURATION (value: the factor) or HUE (value: turns of the YIQ
    chroma plane); ``jitter``: whether the jitter coin came up (its ops may still be empty when
    every strength is 0). ``blur``: the Gaussian sigma, None without blur.
    """

    size: int
    box: tuple[int, int, int, int] | None
    pad_offset: tuple[int, int] | None
    padding: int
    flip: bool
    jitter: bool
    colour: tuple[tuple[int, float], ...]
    gray: bool
    blur: float | None
    solarize: bool

    @property
    def recolours(self) -> bool:
        return self.jitter or self.gray


def crop_box(spec: ViewSpec, w: int, h: int, rng: np.random.Generator):
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


def _jitter_ops(spec: ViewSpec, rng: np.random.Generator, channels: int):
    """Brightness, contrast, saturation, hue in a random order (as torchvision's ColorJitter);
    an op of strength 0, and saturation and hue on one channel, are left out."""
    ops = []
    for k in rng.permutation(4):
        strength = spec.jitter[k]
        if strength <= 0 or (k >= SATURATION and channels != 3):
            continue
        if k == HUE:
            ops.append((HUE, float(rng.uniform(-strength, strength))))
        else:
            ops.append((int(k), float(rng.uniform(max(0.0, 1 - strength), 1 + strength))))
    return tuple(ops)


def draw_views(preset: AugmentPreset, channels: int, w: int, h: int,
               rng: np.random.Generator) -> tuple[ViewPlan, ...]:
    """Every view of ``preset`` for a ``w`` × ``h`` image, drawn from the sample's ``rng``."""
    boxes = [crop_box(spec, w, h, rng) if spec.crop == "rrc" else None for spec in preset.views]
    plans = []
    for spec, box in zip(preset.views, boxes):
        offset = None
        if box is None:
            p = spec.padding
            offset = (int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1)))
        flip = bool(spec.flip) and rng.random() < spec.flip
        jitter = bool(spec.jitter_p) and rng.random() < spec.jitter_p
        gray = bool(spec.grayscale_p) and rng.random() < spec.grayscale_p and channels == 3
        ops = _jitter_ops(spec, rng, channels) if jitter else ()
        blur = None
        if spec.blur_p and rng.random() < spec.blur_p:
            blur = float(rng.uniform(*spec.blur_sigma))
        solarize = bool(spec.solarize_p) and rng.random() < spec.solarize_p
        plans.append(ViewPlan(spec.size, box, offset, spec.padding, bool(flip), bool(jitter), ops,
                              bool(gray), blur, bool(solarize)))
    return tuple(plans)


_LUMA = np.array([0.299, 0.587, 0.114])
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def _hue_matrix(turns: float) -> np.ndarray:
    """Rotate the chroma (I, Q) plane of YIQ by ``turns`` of a full circle (as DALI's hue)."""
    c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    return _YIQ_INV @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _YIQ


def colour_affine(plan: ViewPlan, mean) -> tuple[np.ndarray, np.ndarray]:
    """(A, t): the view's jitter and grayscale as one map ``A @ rgb + t``.

    Each op is affine in RGB — brightness scales, contrast blends with the mean grey, saturation
    blends with the pixel's luma, hue rotates the YIQ chroma plane — so their composition is one
    3×4 map. ``mean()`` gives the view's mean (R, G, B) before any colour op (a grey view: its
    mean three times); it is asked for only when the view has a contrast op. Differences to
    applying the ops one by one: no clipping between ops, and hue is a YIQ rotation rather than
    an HSV shift (the definition DALI's ``hsv``/``color_twist`` use).
    """
    A, t = np.eye(3), np.zeros(3)
    m = None
    for k, f in plan.colour:
        if k == HUE:
            H = _hue_matrix(f)
            A, t = H @ A, H @ t
        elif k == BRIGHTNESS:
            A, t = f * A, f * t
        elif k == CONTRAST:
            if m is None:
                m = np.asarray(mean())
            grey = float(_LUMA @ (A @ m + t))
            A, t = f * A, f * t + (1 - f) * grey
        else:
            S = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _LUMA)
            A, t = S @ A, S @ t
    if plan.gray:
        G = np.outer(np.ones(3), _LUMA)
        A, t = G @ A, G @ t
    return A, t


def eval_geometry(spec: EvalSpec, w: int, h: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): the shorter side resized to ``spec.resize``, then the
    centre ``spec.size`` square cut at (left, top)."""
    r = spec.resize
    nw, nh = (r, round(h * r / w)) if w <= h else (round(w * r / h), r)
    s = spec.size
    return nw, nh, (nw - s) // 2, (nh - s) // 2
