"""Decoded images to the recipe's channels ("L" or "RGB"), for every mode Pillow opens.

Pillow's ``convert`` clips wider samples to 0..255 instead of scaling them: a 16-bit PNG (mode
``I;16``, ``I`` in older Pillow) of 256 grey levels reached the model as 2 levels. ``to_mode`` reads
each mode for what it means:

- 8-bit modes (``1 L P RGB RGBX YCbCr CMYK HSV LAB``): Pillow's conversion (ITU-R 601 luma for L);
- alpha (``LA La PA RGBA RGBa``, a palette or colour with a transparency entry): dropped, the
  colours kept as stored — as DALI's decoder and torchvision read them, so both backends agree;
- 16-bit grey (``I;16 I;16B I;16L I;16N``, and ``I`` from a PNG): scaled, ``round(v / 257)``, so
  65535 is 255 and 256 levels stay 256 — exactly what DALI's decoder gives for the same file;
- anything else — 32-bit float ``F`` and 32-bit integer ``I`` (whose 0..255 range no file
  records), rarer modes — is refused with a ``ValueError`` naming the mode (the loader adds the
  sample and shard). ``ltscale data verify --deep`` reports those samples by shard and key.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_DIRECT = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"})
_VIA = {"La": "LA", "RGBa": "RGBA", "LAB": "RGB"}
_SIXTEEN = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_WHAT = {"F": "32-bit float samples", "I": "32-bit integer samples"}


def unreadable(img: Image.Image) -> str | None:
    """Why training cannot read ``img``'s pixels (None when ``to_mode`` reads them)."""
    mode = img.mode
    if mode in _DIRECT or mode in _VIA or mode in _SIXTEEN or (mode == "I" and img.format == "PNG"):
        return None
    what = _WHAT.get(mode, "a mode training does not read")
    return (f"pixels of mode {mode} ({what}) have no defined 0..255 reading; convert the image "
            "to an 8- or 16-bit PNG or a JPEG")


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` as ``mode`` ("L" or "RGB"), read as the module says; ValueError if it cannot be."""
    if img.mode == mode:
        return img
    if img.mode in _DIRECT and not (img.mode == "P" and "transparency" in img.info):
        return img.convert(mode)
    problem = unreadable(img)
    if problem:
        raise ValueError(problem)
    if img.mode in _SIXTEEN or img.mode == "I":
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)  # I: int32 of 16-bit samples
        grey = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
        return grey if mode == "L" else grey.convert(mode)
    # a palette with transparency: through RGBA (Pillow warns converting it straight to RGB)
    return img.convert(_VIA.get(img.mode, "RGBA")).convert(mode)
