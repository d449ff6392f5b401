"""Augmentation presets: one definition per recipe name, read by both loader backends.

A preset is data — a tuple of view specifications — not code: the torch backend
(``augment_torch``; with ``data.loader.decode: gpu``, ``augment_plan`` draws in the workers and
``augment_device`` applies on the device) and the DALI backend (``data/loading/dali_loader``) each
turn it into their own operations, so a recipe's ``augment.preset`` means the same views on either
backend.

| preset      | views | what                                                                              |
|-------------|-------|-----------------------------------------------------------------------------------|
| ``simclr``  | 2     | SimCLR (Chen et al. 2020, App. A): random resized crop 0.08–1, flip, colour       |
|             |       | jitter 0.8/0.8/0.8/0.2 (strength 1.0, p 0.8), grayscale p 0.2, Gaussian blur      |
|             |       | σ ∈ [0.1, 2] p 0.5 (ImageNet; App. B.9 drops the blur for CIFAR: set ``blur: 0``) |
| ``mocov2``  | 2     | MoCo v2 (Chen et al. 2020b, after InstDisc): crop 0.2–1, flip, jitter             |
|             |       | 0.4/0.4/0.4/0.1 (p 0.8), grayscale p 0.2, blur σ ∈ [0.1, 2] p 0.5                  |
| ``byol``    | 2     | BYOL (Grill et al. 2020, App. B, Table 6), asymmetric: crop 0.08–1, jitter        |
|             |       | 0.4/0.4/0.2/0.1 (p 0.8), grayscale p 0.2; blur p 1.0 / 0.1, solarize p 0 / 0.2    |
| ``cifar``   | 2     | MoCo v2's views without blur: SimSiam's CIFAR augmentation (Chen & He 2021, App. |
|             |       | D), which seed 000 follows                                                        |
| ``rotation``| 1 → 4 | random crop with 4-px padding, flip; each view rotated by 0/90/180/270° (labels  |
|             |       | 0, 1, 2, 3 in that order: the Rotation SSP of seeds 001/002)                      |
| ``supervised`` | 1  | crop 0.08–1, flip (ImageNet-style training view)                                  |
| ``supervised_cifar`` | 1 | random crop with 4-px padding, flip                                          |

A view is a ``ViewSpec``, so a preset may differ per view (``byol``). The recipe's ``augment``
options (crop_scale, flip, jitter, grayscale, blur) replace a value in every view alike: setting
``blur`` on ``byol`` makes its two views blur alike.

Evaluation views are deterministic: resize the shorter side to ``size / crop_fraction`` and take
the centre ``size × size`` crop (crop_fraction 0.875 from 96 px up, as for ImageNet; 1.0 below).
For one-channel data, saturation, hue and grayscale do not apply and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ltscale.core.errors import RecipeError


@dataclass(frozen=True)
class ViewSpec:
    size: int
    crop: str = "rrc"                  # rrc: random resized crop | pad: random crop after padding
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 4
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness … hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def for_channels(self, channels: int) -> "ViewSpec":
        if channels == 3:
            return self
        b, c, _, _ = self.jitter
        return replace(self, jitter=(b, c, 0.0, 0.0), grayscale_p=0.0)


@dataclass(frozen=True)
class AugmentPreset:
    name: str
    views: tuple[ViewSpec, ...]
    rotations: bool = False   # every view becomes four rotated copies

    @property
    def outputs(self) -> int:
        """Images per sample the loader returns."""
        return len(self.views) * (4 if self.rotations else 1)


@dataclass(frozen=True)
class EvalSpec:
    size: int
    crop_fraction: float

    @property
    def resize(self) -> int:
        return round(self.size / self.crop_fraction)


def _simclr(size: int) -> tuple[ViewSpec, ...]:
    # SimCLR App. A: crop area 0.08–1 (aspect 3/4–4/3), colour distortion of strength s = 1:
    # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8 and grayscale with p 0.2; blur p 0.5
    v = ViewSpec(size, crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
    return (v, v)


def _mocov2(size: int) -> tuple[ViewSpec, ...]:
    # MoCo v2 (Chen et al. 2020b, "aug+"): crop 0.2–1, jitter 0.4/0.4/0.4/0.1 p 0.8,
    # grayscale p 0.2, blur p 0.5
    v = ViewSpec(size, blur_p=0.5)
    return (v, v)


def _byol(size: int) -> tuple[ViewSpec, ...]:
    # BYOL App. B, Table 6: the two views differ in blur (p 1.0 / 0.1) and solarization (0 / 0.2)
    base = ViewSpec(size, crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1))
    return (replace(base, blur_p=1.0), replace(base, blur_p=0.1, solarize_p=0.2))


def _cifar(size: int) -> tuple[ViewSpec, ...]:
    # SimSiam App. D (CIFAR): MoCo v2's views without blur
    v = ViewSpec(size)
    return (v, v)


def _padded(size: int) -> tuple[ViewSpec, ...]:
    return (ViewSpec(size, crop="pad", jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0),)


def _supervised(size: int) -> tuple[ViewSpec, ...]:
    return (ViewSpec(size, crop_scale=(0.08, 1.0), jitter=(0, 0, 0, 0), jitter_p=0.0,
                     grayscale_p=0.0),)


PRESETS = {"simclr": _simclr, "mocov2": _mocov2, "byol": _byol, "cifar": _cifar,
           "rotation": _padded, "supervised": _supervised, "supervised_cifar": _padded}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def make_preset(name: str, size: int, channels: int = 3, *, views: int | None = None,
                crop_scale: tuple[float, float] | None = None, flip: bool | None = None,
                jitter: float | None = None, grayscale: float | None = None,
                blur: float | None = None, padding: int | None = None) -> AugmentPreset:
    """The preset ``name`` at ``size`` px; any option given replaces the preset's value in every
    view (``jitter`` is a strength s: brightness/contrast/saturation s, hue s/4; ``blur`` a
    probability). ``views`` repeats the preset's views cyclically to that many (multi-view)."""
    if name not in PRESETS:
        raise RecipeError(f"unknown augmentation preset {name!r}; known: {', '.join(preset_names())}")
    specs = list(PRESETS[name](size))
    if views is not None:
        if views < 1:
            raise RecipeError(f"augment.views must be at least 1 (got {views})")
        specs = [specs[i % len(specs)] for i in range(views)]
    changes: dict = {}
    if crop_scale is not None:
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise RecipeError(f"augment.crop_scale must satisfy 0 < low <= high <= 1 (got {crop_scale})")
        changes["crop_scale"] = (float(lo), float(hi))
    if flip is not None:
        changes["flip"] = 0.5 if flip else 0.0
    if jitter is not None:
        changes["jitter"] = (jitter, jitter, jitter, min(0.5, jitter / 4))
        changes["jitter_p"] = 0.8 if jitter > 0 else 0.0
    if grayscale is not None:
        changes["grayscale_p"] = grayscale
    if blur is not None:
        changes["blur_p"] = blur
    if padding is not None:
        if padding < 0:
            raise RecipeError(f"augment.padding must be at least 0 (got {padding})")
        changes["padding"] = int(padding)
    specs = [replace(v, **changes).for_channels(channels) for v in specs]
    return AugmentPreset(name, tuple(specs), rotations=(name == "rotation"))


def eval_spec(size: int, crop_fraction: float | None = None) -> EvalSpec:
    if crop_fraction is None:
        crop_fraction = 0.875 if size >= 96 else 1.0
    return EvalSpec(size, crop_fraction)
