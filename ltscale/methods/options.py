"""What a recipe may say about each pretraining method: the ``pretrain.method`` options, with
their defaults and bounds, and the method's default optimizer (``default_optim``, its paper's).

This module imports no torch, so a recipe validates in a fraction of a second
(``config/pretrain.py`` builds the ``pretrain.method`` union from ``METHOD_OPTIONS``). The method
module binds its options by name: ``@register_method("simsiam")`` sets ``SimSiam.Config`` to the
``SimSiamCfg`` registered here, and the method's constructor takes the same keywords with the same
defaults (``tests/unit/methods/test_method_defaults.py`` holds the two together). Adding a method
is its options class here (``@method_options``, with a ``name`` literal) and its module."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ltscale.core.registry import Registry
from ltscale.core.section import Section

METHOD_OPTIONS = Registry("method with recipe options", plural="methods with recipe options")


def method_options(cls: type[Section]) -> type[Section]:
    """Class decorator: register a method's options class under its ``name`` default."""
    return METHOD_OPTIONS.register(cls.model_fields["name"].default, cls)


# SDCLR's released CIFAR-LT runs (cifar-10-LT.sh, train_simCLR.py): SGD at lr 0.5 for batch 512
# (0.25 × B/256), momentum 0.9, weight decay 1e-4, 10 warm-up epochs, cosine decay
SDCLR_OPTIM = {"name": "sgd", "lr": 0.25, "momentum": 0.9, "weight_decay": 1e-4,
               "warmup_epochs": 10, "schedule": "cosine"}


# The authors' reference code (SupContrast, CIFAR): SGD at lr 0.5 for batch 1024 (0.125 × B/256),
# momentum 0.9, weight decay 1e-4 (main_supcon.py's defaults), 10 warm-up epochs (on for batches
# of 256 and more), cosine decay. The paper's ImageNet runs use LARS at batch 6144; not the default.
SUPCON_OPTIM = {"name": "sgd", "lr": 0.125, "momentum": 0.9, "weight_decay": 1e-4,
                "warmup_epochs": 10, "schedule": "cosine"}


@method_options
class SimSiamCfg(Section):
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, gt=0)
    pred_dim: int = Field(512, gt=0)
    proj_layers: int = Field(2, ge=1)
    fix_pred_lr: bool = True                  # §4: the predictor's lr is not decayed
    # each view its own forward, so batch norm normalises each view with its own statistics, as
    # the paper's pseudo-code (f(x1), f(x2)); false: one forward over both views together
    bn_per_view: bool = True
    # Chen & He 2021, §4 "Optimizer": SGD, lr 0.05 × B/256, momentum 0.9, weight decay 1e-4,
    # cosine decay, no warm-up (the CIFAR variant of App. D uses lr 0.03 and weight decay 5e-4)
    default_optim: ClassVar[dict] = {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                     "weight_decay": 1e-4, "warmup_epochs": 0,
                                     "schedule": "cosine"}


@method_options
class MoCoCfg(Section):
    name: Literal["moco"] = "moco"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    queue_size: int = Field(65536, gt=0)      # negatives kept (keys of past batches, all ranks)
    momentum: float = Field(0.999, ge=0, le=1)  # key encoder EMA
    temperature: float = Field(0.2, gt=0)
    shuffle_bn: bool = True                   # false: the recipe is expected to use SyncBN
    symmetric: bool = False                   # ½(L(q1, k2) + L(q2, k1)), both keys enqueued
    # MoCo v2 (Chen et al. 2020b, §2 and Table 1): SGD, lr 0.03 at batch 256 (× B/256), cosine
    # decay, no warm-up; momentum 0.9 and weight decay 1e-4 from MoCo v1 (He et al. 2020, §4)
    default_optim: ClassVar[dict] = {"name": "sgd", "lr": 0.03, "momentum": 0.9,
                                     "weight_decay": 1e-4, "warmup_epochs": 0,
                                     "schedule": "cosine"}


@method_options
class SimCLRCfg(Section):
    name: Literal["simclr"] = "simclr"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.5, gt=0)     # 0.1–0.5 for CIFAR in the SimCLR paper
    # Chen et al. 2020, §2.3 "Default setting": LARS, lr 0.3 × B/256 (4.8 at B = 4096), weight
    # decay 1e-6, 10-epoch linear warm-up then cosine decay; LARS trust coefficient 1e-3 as in the
    # released code (biases and BN parameters excluded from LARS and weight decay)
    default_optim: ClassVar[dict] = {"name": "lars", "lr": 0.3, "lars_eta": 1e-3,
                                     "momentum": 0.9, "weight_decay": 1e-6,
                                     "warmup_epochs": 10, "schedule": "cosine"}


@method_options
class BYOLCfg(Section):
    name: Literal["byol"] = "byol"
    proj_dim: int = Field(4096, gt=0)
    out_dim: int = Field(256, gt=0)
    pred_dim: int = Field(4096, gt=0)         # predictor hidden width
    proj_layers: int = Field(2, ge=2)
    tau_base: float = Field(0.996, ge=0, le=1)  # target EMA, cosine-scheduled to 1
    # each view its own forward through the online and the target network, so batch norm
    # normalises each view with its own statistics, as the reference implementation; false: one
    # forward over both views together
    bn_per_view: bool = True
    # Grill et al. 2020, §3.3 "Optimization": LARS, base lr 0.2 × B/256, weight decay 1.5e-6
    # (biases and BN excluded from LARS and weight decay), 10 warm-up epochs, cosine decay;
    # trust coefficient 1e-3 (App. C)
    default_optim: ClassVar[dict] = {"name": "lars", "lr": 0.2, "lars_eta": 1e-3,
                                     "momentum": 0.9, "weight_decay": 1.5e-6,
                                     "warmup_epochs": 10, "schedule": "cosine"}


@method_options
class BarlowTwinsCfg(Section):
    name: Literal["barlow_twins"] = "barlow_twins"
    proj_dim: int = Field(2048, gt=0)         # seed 000: 2048 hidden and output beat 8192
    out_dim: int = Field(2048, gt=0)
    proj_layers: int = Field(3, ge=2)
    lam: float = Field(0.005, ge=0)           # weight of the off-diagonal terms
    # Zbontar et al. 2021, "Implementation details / Optimization" (BYOL's protocol): LARS, lr
    # 0.2 for weights and 0.0048 for biases and BN parameters, both × B/256, weight decay 1.5e-6
    # (biases and BN excluded from LARS and weight decay), 10 warm-up epochs, cosine decay (the
    # paper stops at lr/1000; ltscale's cosine goes to 0); trust coefficient 1e-3 (released code)
    default_optim: ClassVar[dict] = {"name": "lars", "lr": 0.2, "bias_lr": 0.0048,
                                     "lars_eta": 1e-3, "momentum": 0.9, "weight_decay": 1.5e-6,
                                     "warmup_epochs": 10, "schedule": "cosine"}


@method_options
class RotationCfg(Section):
    name: Literal["rotation"] = "rotation"    # linear head on the encoder; augment.preset rotation
    # Gidaris et al. 2018, §4.1 (CIFAR): SGD, batch 128, lr 0.1 (not batch-scaled), momentum 0.9,
    # weight decay 5e-4, no warm-up. The paper divides the lr by 5 at epochs 30, 60 and 80;
    # ltscale has no step schedule, so cosine decay stands in for it
    default_optim: ClassVar[dict] = {"name": "sgd", "lr": 0.1, "scale_lr": False,
                                     "momentum": 0.9, "weight_decay": 5e-4,
                                     "warmup_epochs": 0, "schedule": "cosine"}


@method_options
class SDCLRCfg(Section):
    name: Literal["sdclr"] = "sdclr"
    proj_dim: int = Field(512, gt=0)          # SDCLR's ResNet-18 head: hidden = feature width 512
    out_dim: int = Field(128, gt=0)           # SDCLR: 128
    proj_layers: int = Field(3, ge=2)         # SDCLR's head: 3 Linear layers
    temperature: float = Field(0.2, gt=0)     # NT-Xent T; SDCLR's CIFAR-LT runs: 0.2
    prune_ratio: float = Field(0.9, ge=0, lt=1)  # fraction of conv/linear weights the pruned
    #                                           branch zeroes; SDCLR: 0.9 CIFAR, 0.3 ImageNet
    prune_scope: Literal["layer", "global"] = "layer"  # ratio per weight tensor, or one global
    #                                           threshold (SDCLR's released code)
    dual_bn: bool = True                      # pruned branch has its own BN (SDCLR --prune_dual_bn)
    default_optim: ClassVar[dict] = SDCLR_OPTIM


@method_options
class FASSLProtoCfg(Section):
    name: Literal["fassl_proto"] = "fassl_proto"  # FASSL stage one: prototype learning
    proj_dim: int = Field(512, gt=0)          # as the sdclr stage whose projector it takes over
    out_dim: int = Field(128, gt=0)           # D, the prototypes' width
    proj_layers: int = Field(3, ge=2)
    prototypes: int = Field(128, gt=0)        # K; FASSL: 128 (64–512 within 0.5 points)
    beta: float = Field(0.2, gt=0)            # β: temperature of Eq. 2's NT-Xent over h = P·z
    # FASSL gives no optimizer (§4.2); it continues from an SDCLR network: SDCLR's (assumed)
    default_optim: ClassVar[dict] = SDCLR_OPTIM


@method_options
class FASSLCfg(Section):
    name: Literal["fassl"] = "fassl"          # FASSL stage two: after a fassl_proto stage
    proj_dim: int = Field(512, gt=0)          # proj_dim, out_dim, proj_layers, prototypes: as
    out_dim: int = Field(128, gt=0)           # the fassl_proto stage before it
    proj_layers: int = Field(3, ge=2)
    pred_dim: int = Field(512, gt=0)          # student MLP (predictor) hidden width; not in paper
    prototypes: int = Field(128, gt=0)        # K
    momentum: float = Field(0.99, ge=0, le=1)  # teacher EMA τ; FASSL: 0.99 (Table 3)
    weight_clip: float = Field(3.0, ge=0)     # log-weights clipped to batch mean ± this many
    #                                           std ("clip outliers", value not given); 0: off
    default_optim: ClassVar[dict] = SDCLR_OPTIM  # as fassl_proto's (FASSL gives none; assumed)


@method_options
class SupConCfg(Section):
    name: Literal["supcon"] = "supcon"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)           # SupCon: 128
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.1, gt=0)     # τ; SupCon paper and SBCL's SCL runs: 0.1
    default_optim: ClassVar[dict] = SUPCON_OPTIM


@method_options
class KCLCfg(Section):
    name: Literal["kcl"] = "kcl"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.1, gt=0)     # τ, as SupCon's (SBCL's KCL baseline)
    k: int = Field(6, ge=1)                   # positives drawn per anchor besides its own other
    #                                           view; KCL: 6
    # KCL's own optimizer is not in our papers (SBCL re-runs KCL without giving one): SupCon's
    # reference optimizer, as KCL changes only which positives SupCon's loss counts (assumed)
    default_optim: ClassVar[dict] = SUPCON_OPTIM


@method_options
class SBCLCfg(Section):
    # defaults: SBCL's appendix values are not in our copy of the paper; these are the authors'
    # CIFAR-LT release (τ1 0.1, β 0.25, δ 10, α 10, K 10, 10 warm-up epochs)
    name: Literal["sbcl"] = "sbcl"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    tau1: float = Field(0.1, gt=0)            # τ1: subclass term's temperature (and warm-up τ)
    beta: float = Field(0.25, ge=0)           # β: weight of the class term (eq. 4); 0.25
    delta: int = Field(10, ge=1)              # δ: subclass cap M = max(n_C, δ), n_C the smallest
    #                                           class (eq. 3); 10
    alpha: float = Field(10.0, gt=0)          # α in φ(c)'s log(n_c + α) (eq. 5); 10
    warmup_epochs: int = Field(10, ge=0)      # T0: epochs of plain SupCon/KCL first; 10
    warmup_loss: Literal["supcon", "kcl"] = "supcon"  # the warm-up loss (SBCL: SCL or KCL)
    k: int = Field(6, ge=1)                   # KCL positives, when warmup_loss is kcl; 6
    update_every: int = Field(10, ge=1)       # K: epochs between re-clustering + τ2 updates; 10
    cluster_iters: int = Field(10, ge=0)      # balanced k-means iterations after the
    #                                           farthest-first start (Algorithm 1's K)
    # the optimizer is in the appendix our copy lacks: SupCon's reference one, as SBCL starts
    # with SupCon epochs and compares with SupCon at equal settings (assumed)
    default_optim: ClassVar[dict] = SUPCON_OPTIM
