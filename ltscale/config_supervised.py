"""Recipe sections of the supervised stages: the fine-tuning head and its losses, the baselines
trained on the same manifest, and self-training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ltscale.config_base import AugmentCfg, OptimCfg, Section

LOSS_NAMES = Literal["ce", "la", "sl", "la_sl", "balanced_softmax", "focal", "cb", "cb_focal",
                    "drw", "ldam", "ldam_drw"]


class LossCfg(Section):
    # the names of ltscale.losses.registry (kept in step by tests/unit/test_losses.py)
    name: LOSS_NAMES = "la_sl"
    tau: float = 1.0            # logit adjustment strength (la, la_sl)
    lam: float = Field(4.0, gt=0)  # SuperLoss λ (sl, la_sl)
    tau_sl: float | Literal["mean"] | None = None  # SuperLoss threshold; None = log C, "mean" = EMA
    gamma: float = Field(1.0, ge=0)              # focal loss γ (focal, cb_focal)
    beta: float = Field(0.9999, ge=0, lt=1)      # class-balanced β (cb, cb_focal)
    max_margin: float = Field(0.5, gt=0)         # LDAM largest margin (ldam, ldam_drw)
    scale: float = Field(30.0, gt=0)             # LDAM logit scale s (ldam, ldam_drw)
    drw_start: float = Field(0.8, ge=0, le=1)    # DRW: re-weighting from this fraction of epochs
    drw_beta: float = Field(0.9999, ge=0, lt=1)  # DRW: class-balanced β of the deferred weights

    def options(self) -> dict:
        """The options that apply to the chosen loss, as keyword arguments for the registry."""
        sl, drw, ldam = ("lam", "tau_sl"), ("drw_start", "drw_beta"), ("max_margin", "scale")
        keys = {"ce": (), "la": ("tau",), "sl": sl, "la_sl": ("tau", *sl), "balanced_softmax": (),
                "focal": ("gamma",), "cb": ("beta",), "cb_focal": ("beta", "gamma"), "drw": drw,
                "ldam": ldam, "ldam_drw": (*ldam, *drw)}[self.name]
        return {k: getattr(self, k) for k in keys}


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
    extra_losses: list[LOSS_NAMES] = []
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
            if name.startswith("ldam") and self.classifier_stage in ("tau_norm", "lws"):
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


class ScratchCfg(Section):
    enabled: bool = True
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    loss: LossCfg = LossCfg(name="ce")
    optim: OptimCfg = OptimCfg(lr=0.1, warmup_epochs=1)
    augment: AugmentCfg = AugmentCfg(preset="supervised_cifar")
    balance: Literal["instance", "class", "sqrt", "progressive"] = "instance"


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
