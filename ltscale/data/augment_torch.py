"""The torch backend's augmentation: presets applied with Pillow, one decode per sample.

Why Pillow and not tensor ops: on CPU, Pillow's C kernels for crop+resize (with antialiasing),
enhancement, blur and HSV conversion are faster than the equivalent tensor ops on uint8 images
of this size, and they let the decoder work at reduced size. The crop of every view is drawn
*before* decoding, from the image header's size; a JPEG is then decoded with libjpeg's DCT scaling
(``Image.draft``, 1/2, 1/4 or 1/8) to the smallest size that still gives every crop at least the
output resolution, and all views are cut from that one decode (decode once, crop V times).

Randomness comes from a ``numpy`` generator per sample, seeded by the sampler from (seed, epoch,
global slot): a sample's views do not depend on the worker that makes them, so runs are
reproducible with any number of workers and a resumed run draws the same views. Every draw goes
through ``augment_plan.draw_views`` (``TrainViews.plan``), which the device path
(``data.loader.decode: gpu``) uses too: both draw the same parameters from the same seed.

Outputs are uint8 tensors (C, H, W); the loader converts to float and normalises after the batch
has reached its device (a quarter of the bytes through worker queues and host-to-device copies).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, ImageStat

from ltscale.data.augment import AugmentPreset, EvalSpec
from ltscale.data.augment_plan import ViewPlan, colour_affine, draw_views, eval_geometry
from ltscale.data.augment_plan import crop_box as _crop_box  # noqa: F401  (tests draw boxes)
from ltscale.data.pixels import to_mode


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded image (header read only)."""
    return Image.open(io.BytesIO(data))


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


def _colour(img: Image.Image, plan: ViewPlan) -> Image.Image:
    """The view's jitter and grayscale (``colour_affine``) applied in a single pass: a 3×4 colour
    matrix (``Image.convert(matrix=…)`` in C, instead of four image passes and an HSV round trip),
    or a lookup table on one channel (brightness and contrast only)."""
    def mean():
        stat = ImageStat.Stat(img).mean
        return stat[:3] if img.mode == "RGB" else stat * 3

    A, t = colour_affine(plan, mean)
    if img.mode == "L":
        a, b = float(A[0].sum()), float(t[0])
        return img.point([min(255, max(0, round(a * v + b))) for v in range(256)])
    matrix = tuple(float(x) for row in np.hstack([A, t[:, None]]) for x in row)
    return img.convert("RGB", matrix)


def _finish(img: Image.Image, plan: ViewPlan) -> Image.Image:
    if plan.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if plan.recolours:
        img = _colour(img, plan)
    if plan.blur is not None:
        img = img.filter(ImageFilter.GaussianBlur(radius=plan.blur))
    if plan.solarize:
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
        self.channels = 1 if channels == 1 else 3
        self.outputs = preset.outputs

    def plan(self, w: int, h: int, rng: np.random.Generator) -> tuple[ViewPlan, ...]:
        """The views' random parameters for a ``w`` × ``h`` image (``augment_plan.draw_views``)."""
        return draw_views(self.preset, self.channels, w, h, rng)

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        img = open_image(data)
        w, h = img.size
        plans = self.plan(w, h, rng)
        # the crop with the fewest pixels per output pixel decides how far the decode may shrink
        scale = min((min(p.box[2] - p.box[0], p.box[3] - p.box[1]) / p.size
                     for p in plans if p.box), default=1.0)
        if all(p.box for p in plans):
            shrink = _draft(img, self.mode, w / scale, h / scale) if scale > 1 else 1.0
        else:
            shrink = 1.0
        img = _to_mode(img, self.mode)
        views = []
        for plan in plans:
            if plan.box is None:
                view = self._pad_crop(img, plan)
            else:
                # DCT scaling rounds each side up on its own, so the height may have shrunk a
                # little less than the width: keep the scaled box inside the decoded image
                left, top, right, bottom = (v / shrink for v in plan.box)
                fbox = (left, top, min(right, img.size[0]), min(bottom, img.size[1]))
                view = img.resize((plan.size, plan.size), Image.Resampling.BILINEAR, box=fbox)
            view = to_tensor(_finish(view, plan))
            if self.preset.rotations:
                views.extend(torch.rot90(view, k, dims=(1, 2)) for k in range(4))
            else:
                views.append(view)
        return torch.stack(views)

    @staticmethod
    def _pad_crop(img: Image.Image, plan: ViewPlan) -> Image.Image:
        s = plan.size
        if img.size != (s, s):
            img = img.resize((s, s), Image.Resampling.BILINEAR)
        if plan.padding:
            img = ImageOps.expand(img, border=plan.padding, fill=0)
        x, y = plan.pad_offset
        return img.crop((x, y, x + s, y + s))


class EvalView:
    """bytes → uint8 tensor (C, H, W): shorter side to ``resize``, centre crop ``size``."""

    outputs = 1

    def __init__(self, spec: EvalSpec, channels: int):
        self.spec, self.mode = spec, ("L" if channels == 1 else "RGB")
        self.channels = 1 if channels == 1 else 3

    def plan(self, w: int, h: int, rng=None) -> None:
        """Nothing to draw: an evaluation view is deterministic (``augment_plan.eval_geometry``)."""
        return None

    def __call__(self, data: bytes, rng=None) -> torch.Tensor:
        img = open_image(data)
        w, h = img.size
        nw, nh, x, y = eval_geometry(self.spec, w, h)
        if (w, h) != (nw, nh):
            _draft(img, self.mode, nw, nh)
            img = _to_mode(img, self.mode).resize((nw, nh), Image.Resampling.BILINEAR)
        else:
            img = _to_mode(img, self.mode)
        s = self.spec.size
        if (x, y) != (0, 0) or (nw, nh) != (s, s):
            img = img.crop((x, y, x + s, y + s))
        return to_tensor(img)
