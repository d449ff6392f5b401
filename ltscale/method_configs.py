"""The options of every pretraining method (``pretrain.method`` and each of ``pretrain.stages``),
one class per method; the ``name`` field picks the class. Defaults are the papers' (each field
says where it comes from when a paper is silent)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from ltscale.config_base import Section


class SimSiamCfg(Section):
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, gt=0)
    pred_dim: int = Field(512, gt=0)
    proj_layers: int = Field(2, ge=1)
    fix_pred_lr: bool = True


# Projector widths of the methods below: ``proj_dim`` is the hidden width (the first layer's, which
# finetune.mode proj_head / last_fc starts from), ``out_dim`` the output, ``proj_layers`` the Linear
# layers (Linear → BN → ReLU between them).

class SimCLRCfg(Section):
    name: Literal["simclr"] = "simclr"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.5, gt=0)     # 0.1–0.5 for CIFAR in the SimCLR paper


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


class BYOLCfg(Section):
    name: Literal["byol"] = "byol"
    proj_dim: int = Field(4096, gt=0)
    out_dim: int = Field(256, gt=0)
    pred_dim: int = Field(4096, gt=0)         # predictor hidden width
    proj_layers: int = Field(2, ge=2)
    tau_base: float = Field(0.996, ge=0, le=1)  # target EMA, cosine-scheduled to 1


class BarlowTwinsCfg(Section):
    name: Literal["barlow_twins"] = "barlow_twins"
    proj_dim: int = Field(2048, gt=0)         # seed 000: 2048 hidden and output beat 8192
    out_dim: int = Field(2048, gt=0)
    proj_layers: int = Field(3, ge=2)
    lam: float = Field(0.005, ge=0)           # weight of the off-diagonal terms


class RotationCfg(Section):
    name: Literal["rotation"] = "rotation"    # linear head on the encoder; augment.preset rotation


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


class FASSLProtoCfg(Section):
    name: Literal["fassl_proto"] = "fassl_proto"  # FASSL stage one: prototype learning
    proj_dim: int = Field(512, gt=0)          # as the sdclr stage whose projector it takes over
    out_dim: int = Field(128, gt=0)           # D, the prototypes' width
    proj_layers: int = Field(3, ge=2)
    prototypes: int = Field(128, gt=0)        # K; FASSL: 128 (64–512 within 0.5 points)
    beta: float = Field(0.2, gt=0)            # β: temperature of Eq. 2's NT-Xent over h = P·z


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


# Label-aware contrastive pretraining (trains on the labeled role): SupCon, KCL, SBCL.
class SupConCfg(Section):
    name: Literal["supcon"] = "supcon"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)           # SupCon: 128
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.1, gt=0)     # τ; SupCon paper and SBCL's SCL runs: 0.1


class KCLCfg(Section):
    name: Literal["kcl"] = "kcl"
    proj_dim: int = Field(2048, gt=0)
    out_dim: int = Field(128, gt=0)
    proj_layers: int = Field(2, ge=2)
    temperature: float = Field(0.1, gt=0)     # τ, as SupCon's (SBCL's KCL baseline)
    k: int = Field(6, ge=1)                   # positives drawn per anchor besides its own other
    #                                           view; KCL: 6


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


# every method's options, one class per line (the `name` field picks the class)
_METHOD_CFGS = (
    SimSiamCfg,
    SimCLRCfg,
    MoCoCfg,
    BYOLCfg,
    BarlowTwinsCfg,
    RotationCfg,
    SDCLRCfg,
    FASSLProtoCfg,
    FASSLCfg,
    SupConCfg,
    KCLCfg,
    SBCLCfg,
)
MethodCfg = Annotated[Union[_METHOD_CFGS], Field(discriminator="name")]
