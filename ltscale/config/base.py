"""The base of every recipe section (unknown keys are refused, assignments validated), and the
optimizer and augmentation sections that several stages use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    # cosine: linear warm-up from 0, cosine to 0; constant: warm-up, then flat; onecycle: from
    # lr/25 up to lr over the warm-up, then down to lr/2.5e5, both along half cosines
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"


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
