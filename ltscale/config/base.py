"""The optimizer, backbone and augmentation sections that several stages use (their base,
``Section``, is in ``core/section.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)

from ltscale.core.section import Section


class BackboneCfg(Section):
    name: str = "cifar_resnet20"
    cifar_stem: bool = True

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from ltscale.models import backbone_names

        if v not in backbone_names():
            raise ValueError(f"unknown backbone; registered: {', '.join(backbone_names())}")
        return v


class OptimCfg(Section):
    """An optimizer and its schedule. For pretraining, the fields a recipe leaves out come from
    the method's ``default_optim`` (its paper's optimizer; see ``config.pretrain``), and only then
    from the defaults below."""
    name: Literal["sgd", "lars", "adam", "adamw"] = "sgd"
    lr: float = Field(0.03, gt=0)               # base lr, scaled by batch_size / 256
    bias_lr: float | None = Field(None, gt=0)   # base lr of biases and norm parameters; None: lr
    lars_eta: float = Field(0.02, gt=0)         # LARS trust coefficient
    scale_lr: bool = True
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False                      # sgd: Nesterov momentum
    weight_decay: float = Field(5e-4, ge=0)
    decay_norm_bias: bool = False               # weight decay on norm parameters and biases too
    warmup_epochs: float = Field(10, ge=0)
    # warm-up as a share of the stage's epochs (onecycle's pct_start); replaces warmup_epochs
    # when set, so a warm-up share stays a share when the epochs change (budget: match)
    warmup_fraction: float | None = Field(None, ge=0, le=1)
    # cosine: linear warm-up from 0, cosine to 0; constant: warm-up, then flat; onecycle: from
    # lr/25 up to lr over the warm-up, then down to lr/2.5e5, both along half cosines
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"


    def warmup_for(self, epochs: float) -> float:
        """Warm-up epochs of a stage of ``epochs`` epochs."""
        return self.warmup_epochs if self.warmup_fraction is None \
            else self.warmup_fraction * epochs


def layered_fields(defaults: dict, *given, key: str) -> dict:
    """A section's fields: ``defaults`` (a method's or stage's own), then the fields set in each
    of ``given`` (dicts or sections; later ones win). Naming another ``key`` (optimizer name,
    preset) than the defaults' drops the defaults: they belong to that choice."""
    chosen: dict = {}
    for g in given:
        if isinstance(g, BaseModel):
            chosen |= {k: getattr(g, k) for k in g.model_fields_set}
        elif isinstance(g, dict):
            chosen |= g
    defaults = dict(defaults)
    if chosen.get(key, defaults.get(key)) != defaults.get(key):
        defaults = {}
    return defaults | chosen


def layered_optim(defaults: dict, *given) -> dict:
    """``layered_fields`` for an optimizer (keyed by its name), and setting ``warmup_epochs``
    without ``warmup_fraction`` drops a default warm-up share (the recipe's epochs win)."""
    chosen = layered_fields({}, *given, key="name")
    out = layered_fields(defaults, chosen, key="name")
    if "warmup_epochs" in chosen and "warmup_fraction" not in chosen:
        out.pop("warmup_fraction", None)
    return out


class AugmentCfg(Section):
    preset: str = "cifar"     # simclr | mocov2 | byol | cifar | rotation | supervised | …
    views: int | None = Field(None, gt=0)     # None: the preset's count (multi-view when larger)
    # None keeps the preset's value; a value replaces it in every view
    crop_scale: tuple[float, float] | None = None
    flip: bool | None = None
    jitter: float | None = Field(None, ge=0)  # strength s: brightness/contrast/saturation s, hue s/4
    grayscale: float | None = Field(None, ge=0, le=1)
    blur: float | None = Field(None, ge=0, le=1)  # probability
    padding: int | None = Field(None, ge=0)   # pixels of zero padding before a padded random crop

    @field_validator("preset")
    @classmethod
    def _preset(cls, v):
        from ltscale.data.augment import preset_names

        if v not in preset_names():
            raise ValueError(f"unknown preset; known: {', '.join(preset_names())}")
        return v

    def options(self) -> dict:
        return self.model_dump(exclude={"preset"})
