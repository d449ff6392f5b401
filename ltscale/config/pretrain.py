"""The recipe's ``pretrain`` section: backbone, kNN monitor, the method (or a list of stages)
and its optimizer.

Each method's options class may declare ``default_optim`` (a ClassVar dict of ``OptimCfg``
fields: its paper's optimizer). A stage's optimizer is built in layers: ``OptimCfg``'s own
defaults, then the method's ``default_optim``, then the fields the recipe sets in
``pretrain.optim``, then those it sets in the stage's ``optim``. A field the recipe sets replaces
only that field, except ``name``: naming another optimizer than the method's drops the method's
defaults (they belong to its optimizer). The layers are resolved when the recipe is read, so ``pretrain.optim`` (and each
stage's ``optim``) holds the optimizer that will run, as dumped to MLflow and ``recipe.yaml``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, model_validator

from ltscale.config.base import AugmentCfg, BackboneCfg, OptimCfg, Section, layered_optim
from ltscale.methods import method_config, method_configs


def _is_section(given: Any) -> bool:
    return given is None or isinstance(given, (dict, BaseModel))


def _set_fields(given: Any) -> dict:
    """The fields a recipe (or caller) set in a section (None: none)."""
    if isinstance(given, BaseModel):
        return {k: getattr(given, k) for k in given.model_fields_set}
    return dict(given or {})


def _method_name(method: Any) -> str:
    if isinstance(method, BaseModel):
        return method.name
    if isinstance(method, dict) and isinstance(method.get("name"), str):
        return method["name"]
    return "simsiam"  # PretrainCfg's default method; a bad section fails its own validation


def method_optim(method_name: str, *given: Any) -> dict:
    """The optimizer fields of a stage running ``method_name``: the method's ``default_optim``,
    then the fields set in each of ``given`` (dicts or sections), later ones winning. A recipe
    that names another optimizer than the method's gets none of the method's defaults: they were
    tuned for that optimizer (e.g. a LARS learning rate or trust coefficient under Adam)."""
    try:
        defaults = dict(getattr(method_config(method_name), "default_optim", {}))
    except KeyError:
        defaults = {}  # an unknown method: the method section's validation names it
    return layered_optim(defaults, *given)


class KnnCfg(Section):
    enabled: bool = True
    # the labelled bank: `manifest`, the manifest's training images with their observed
    # (possibly noisy) labels, what a practitioner has; `clean_train`, the whole train split with
    # its clean labels (an oracle monitor)
    bank: Literal["manifest", "clean_train"] = "manifest"
    bank_per_class: int = Field(100, gt=0)   # at most this many bank images per (observed) class
    queries: int = Field(2000, gt=0)         # test images scored (a fixed balanced subset)
    k: int = Field(200, gt=0)                 # weighted kNN as customary: k = 200, T = 0.1
    temperature: float = Field(0.1, gt=0)
    every: int = Field(1, gt=0)               # epochs between evaluations (and the last epoch)


Balance = Literal["instance", "class", "sqrt", "progressive"]


# the recipe's method section: the options class of whichever method `name` picks, each declared
# torch-free in ltscale/methods/options.py
MethodCfg = Annotated[Union[method_configs()], Field(discriminator="name")]


class PretrainStageCfg(Section):
    """One stage of a multi-stage pretraining (``pretrain.stages``). Settings left out are taken
    from ``pretrain``; stage k > 0 starts from stage k − 1's encoder (and whatever else its method
    takes over in ``init_from``, e.g. FASSL's prototypes)."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # its folder and MLflow run
    method: MethodCfg
    epochs: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    optim: OptimCfg | None = None
    augment: AugmentCfg | None = None
    balance: Balance | None = None


class PretrainCfg(Section):
    method: MethodCfg = method_config("simsiam")()
    # several methods in sequence, each from the previous one's encoder (e.g. SDCLR → FASSL's
    # prototype stage → FASSL's student/teacher stage); replaces `method` when given
    stages: list[PretrainStageCfg] = []
    backbone: BackboneCfg = BackboneCfg()
    epochs: int = Field(800, gt=0)
    batch_size: int = Field(512, gt=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1)          # micro-batches per optimizer step
    checkpoint_every: int = Field(0, ge=0)    # optimizer steps between mid-epoch checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    workers: int = Field(2, ge=0)
    optim: OptimCfg = OptimCfg()
    augment: AugmentCfg = AugmentCfg()
    balance: Literal["instance", "class", "sqrt", "progressive"] = "instance"
    knn: KnnCfg = KnnCfg()
    online_probe: bool = False  # a linear classifier on detached features, trained alongside

    @model_validator(mode="before")
    @classmethod
    def _method_optimizers(cls, data: Any):
        """Fill every optimizer field the recipe leaves out from the method's ``default_optim``
        (see the module's docstring)."""
        if not isinstance(data, dict):
            return data
        given = data.get("optim")
        if not _is_section(given):  # not a mapping: OptimCfg's validation says so
            return data
        data = dict(data)
        if isinstance(data.get("stages"), list):
            stages = []
            for s in data["stages"]:
                if isinstance(s, (dict, BaseModel)) and _is_section(_set_fields(s).get("optim")):
                    s = _set_fields(s)
                    s["optim"] = method_optim(_method_name(s.get("method")), given,
                                              s.get("optim"))
                stages.append(s)
            data["stages"] = stages
        data["optim"] = method_optim(_method_name(data.get("method")), given)
        return data

    @model_validator(mode="after")
    def _stages_or_method(self):
        if self.stages and "method" in self.model_fields_set:
            raise ValueError("give either pretrain.method (one stage) or pretrain.stages, not "
                             "both")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"pretrain.stages names must be unique, got {names}")
        return self

    def resolved_stages(self) -> list["PretrainStageCfg"]:
        """Every stage with its settings filled in from this section (one stage named
        ``pretrain`` when no ``stages`` are given)."""
        if not self.stages:
            return [PretrainStageCfg(name="pretrain", method=self.method, epochs=self.epochs,
                                     batch_size=self.batch_size,
                                     max_steps_per_epoch=self.max_steps_per_epoch,
                                     optim=self.optim, augment=self.augment,
                                     balance=self.balance)]
        out = []
        for s in self.stages:
            filled = {k: getattr(self, k) if getattr(s, k) is None else getattr(s, k)
                      for k in ("epochs", "batch_size", "optim", "augment", "balance")}
            steps = s.max_steps_per_epoch if s.max_steps_per_epoch is not None \
                else self.max_steps_per_epoch
            out.append(PretrainStageCfg(name=s.name, method=s.method, max_steps_per_epoch=steps,
                                        **filled))
        return out

    @property
    def final_method(self):
        """The method whose encoder pretraining hands to fine-tuning (the last stage's)."""
        return self.stages[-1].method if self.stages else self.method
