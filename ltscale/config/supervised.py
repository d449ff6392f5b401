"""Recipe sections of the supervised stages: the fine-tuning head and its losses, the baselines
trained on the same manifest, and self-training."""

from __future__ import annotations

from copy import copy
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from ltscale.config.base import (
    AugmentCfg,
    BackboneCfg,
    OptimCfg,
    Section,
    layered_fields,
    layered_optim,
)
from ltscale.losses import loss_config, option_names
from ltscale.losses.options import LossOptions


class _LossSection(LossOptions):
    """``finetune.loss``: the loss's name and, flat beside it, the options of every loss (a recipe
    may set options of other losses: ``extra_losses`` heads take theirs from here)."""

    def options(self) -> dict:
        """The options that apply to the chosen loss, as keyword arguments for the registry."""
        return {key: getattr(self, key) for key in loss_config(self.name).model_fields}


def build_loss_cfg() -> type[_LossSection]:
    """The ``finetune.loss`` section for the losses registered now: ``name`` one of them, and the
    union of their options. An option declared by several losses must be declared alike (type,
    default, bounds), since the recipe holds one value for all of them."""
    names = option_names()
    fields: dict[str, tuple] = {}
    owner: dict[str, str] = {}
    for name in names:
        for key, info in loss_config(name).model_fields.items():
            spec = (info.annotation, info.default, info.metadata)
            if key in fields and (fields[key][0], fields[key][1].default,
                                  fields[key][1].metadata) != spec:
                raise TypeError(f"losses {owner[key]!r} and {name!r} declare option {key!r} "
                                "differently (type, default or bounds); a recipe has one value "
                                "for both: declare it alike, or name it differently")
            if key not in fields:
                fields[key], owner[key] = (info.annotation, copy(info)), name
    default = "la_sl" if "la_sl" in names else names[0]
    return create_model("LossCfg", __base__=_LossSection, __module__=__name__,
                        name=(Literal[tuple(names)], default), **fields)


LossCfg = build_loss_cfg()
LossName = LossCfg.model_fields["name"].annotation  # Literal of every registered loss name


class FinetuneCfg(Section):
    # linear: frozen encoder → linear classifier on cached features; proj_head: frozen encoder →
    # the pretrained projector's first layer (trainable) → new classifier (seed 000's "2 FC
    # layers"); last_fc: that projector layer frozen, only the classifier trained (seed 000 above
    # 60 % noise, lr 0.01); partial: the last `trainable_stages` encoder stages + classifier end to
    # end on images; full: the whole encoder + classifier end to end
    mode: Literal["linear", "proj_head", "last_fc", "partial", "full"] = "linear"
    loss: LossCfg = LossCfg()
    # more heads on the same frozen encoder and feature cache, one per loss named here (with
    # loss's other options): each is its own finetune + eval run, e.g. seed 000's CE/LA/SL/LA+SL
    extra_losses: list[LossName] = []  # type: ignore[valid-type]
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    balance: Literal["instance", "class", "sqrt", "progressive"] = "instance"
    aug_copies: int = Field(0, ge=0)          # augmented copies of each sample in the cache
    augment: AugmentCfg = AugmentCfg(preset="supervised_cifar")  # their views (and partial/full)
    trainable_stages: int = Field(1, ge=1)    # partial: encoder stages trained, counted from the end
    max_steps_per_epoch: int | None = Field(None, gt=0)  # partial/full: cap steps per epoch
    # after the head: none | crt (re-train the classifier with class-balanced sampling) |
    # tau_norm (w_c / ||w_c||^tau, bias dropped) | lws (a learned scale per class)
    classifier_stage: Literal["none", "crt", "tau_norm", "lws"] = "none"
    crt_epochs: int = Field(10, gt=0)         # cRT / LWS epochs
    tau_norm: float = Field(1.0, ge=0)
    workers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _cosine_heads(self):
        # LDAM heads are cosine classifiers; τ-norm and LWS rescale a linear one
        for name in [self.loss.name, *self.extra_losses]:
            if loss_config(name).classifier == "cosine" and \
                    self.classifier_stage in ("tau_norm", "lws"):
                raise ValueError(f"classifier_stage {self.classifier_stage} needs a linear "
                                 f"classifier, but loss {name} trains a cosine one; use "
                                 "classifier_stage crt or none")
        return self

    @model_validator(mode="after")
    def _extra_heads(self):
        if not self.extra_losses:
            return self
        names = [self.loss.name, *self.extra_losses]
        if len(set(names)) != len(names):
            raise ValueError(f"extra_losses {self.extra_losses} repeats a loss (loss.name is "
                             f"{self.loss.name}); name each loss once")
        if self.mode not in ("linear", "proj_head", "last_fc"):
            raise ValueError(f"extra_losses trains more heads on the frozen encoder's cached "
                             f"features; with mode {self.mode} each would be a whole end-to-end "
                             "training: sweep finetune.loss.name instead")
        return self


# The from-scratch network's optimizer when a recipe sets none: what a competent plain PyTorch
# script uses for a small-image ResNet (He et al. 2016's SGD at lr 0.1 for batch 128 with
# momentum 0.9 and wd 5e-4, Nesterov momentum, weight decay on every parameter) with the
# one-cycle schedule (Smith & Topin 2019: 30 % of the steps rising from lr/25, then a cosine to
# lr/2.5e5), which wins short budgets. Measured against the old defaults (linear warm-up of one
# epoch + cosine, no Nesterov, no decay on norms and biases) in docs/baselines.md.
SCRATCH_OPTIM = {"name": "sgd", "lr": 0.2, "scale_lr": True, "momentum": 0.9, "nesterov": True,
                 "weight_decay": 5e-4, "decay_norm_bias": True, "schedule": "onecycle",
                 "warmup_fraction": 0.3}
# the from-scratch network's view: a random crop after zero padding, and a flip
SCRATCH_AUGMENT = {"preset": "supervised_cifar", "padding": 2}


class ScratchCfg(Section):
    enabled: bool = True
    # the from-scratch network; None: the same network as pretrain.backbone (the SSL encoder)
    backbone: BackboneCfg | None = None
    epochs: int = Field(10, gt=0)
    # epochs: train `epochs` epochs; match: as many epochs as it takes to see at least as many
    # images as the two-stage pipeline (pretraining + fine-tuning), so that "SSL beats scratch"
    # is tested at equal compute (ltscale/stages/budget.py)
    budget: Literal["epochs", "match"] = "epochs"
    batch_size: int = Field(256, gt=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    loss: LossCfg = LossCfg(name="ce")
    # the same network from scratch once more per loss named here (with loss's other options),
    # e.g. [la, sl, la_sl]: seed 000's single-stage networks (its Figure 4), so that two-stage
    # SSL is compared with the strongest supervised recipe of equal compute, not only CE
    extra_losses: list[LossName] = []
    # the fields a recipe leaves out come from SCRATCH_OPTIM (config.base.layered_optim)
    optim: OptimCfg = OptimCfg(**SCRATCH_OPTIM)
    augment: AugmentCfg = AugmentCfg(**SCRATCH_AUGMENT)  # layered as optim
    balance: Literal["instance", "class", "sqrt", "progressive"] = "instance"

    @model_validator(mode="before")
    @classmethod
    def _layered_defaults(cls, data: Any):
        """A recipe's ``optim`` and ``augment`` mappings replace only the fields they set (see
        ``SCRATCH_OPTIM``, ``SCRATCH_AUGMENT``; another optimizer or preset drops the defaults).
        A section object (``OptimCfg(…)``, or the validated one an assignment passes back) is
        taken whole."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("optim"), dict):
            data["optim"] = layered_optim(SCRATCH_OPTIM, data["optim"])
        if isinstance(data.get("augment"), dict):
            data["augment"] = layered_fields(SCRATCH_AUGMENT, data["augment"], key="preset")
        return data

    @model_validator(mode="after")
    def _distinct_losses(self):
        names = [self.loss.name, *self.extra_losses]
        if len(set(names)) != len(names):
            raise ValueError(f"extra_losses {self.extra_losses} repeats a loss (loss.name is "
                             f"{self.loss.name}); name each loss once")
        return self

    def losses(self) -> list[str]:
        """Every from-scratch network's loss, the section's own first."""
        return [self.loss.name, *self.extra_losses]


class BaselinesCfg(Section):
    random_encoder: bool = True   # the untrained encoder with the same head: the floor
    ce_scratch: ScratchCfg = ScratchCfg()


class SelfTrainCfg(Section):
    # Yang & Xu 2020 §2: a teacher trained on D_L pseudo-labels the manifest's unlabeled pool D_U
    # (manifest.unlabeled), then a student learns D_L ∪ pseudo-labelled D_U with L(D_L) + ω·L(D_U)
    enabled: bool = False
    teacher: Literal["finetune", "ce_scratch"] = "finetune"  # the pipeline's fine-tuned model,
    #   or the CE-from-scratch baseline (trained here when baselines.ce_scratch is off)
    threshold: float = Field(0.0, ge=0, le=1)  # keep a pseudo-label when the teacher's softmax
    #   probability is at least this; 0: keep every argmax (the paper)
    weight: float = Field(1.0, ge=0)          # ω on the pseudo-labelled samples' loss; 1 (the
    #   paper's reference code simply concatenates D_U with its pseudo-labels)
    init: Literal["scratch", "pretrained"] = "scratch"  # the student's encoder: freshly
    #   initialised (the paper), or the pretrain stage's encoder
    epochs: int = Field(10, gt=0)             # student epochs over D_L ∪ D_U
    batch_size: int = Field(256, gt=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)  # cap on student steps per epoch
    loss: LossCfg = LossCfg(name="ce")        # the student's loss (ce, ldam_drw, …; counts of
    #   D_L ∪ pseudo-labelled D_U)
    optim: OptimCfg = OptimCfg(lr=0.1, warmup_epochs=1)  # the student's optimizer and schedule
    augment: AugmentCfg = AugmentCfg(preset="supervised_cifar")  # the student's training views
    balance: Literal["instance", "class", "sqrt", "progressive"] = "instance"  # student sampling
    workers: int = Field(2, ge=0)             # loader workers (pseudo-labelling and student)
