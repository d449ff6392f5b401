"""The fine-tuning loss registry: a loss is one class in one module, and the recipe's
``finetune.loss`` section is built from the registered classes."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError

from ltscale.config.supervised import LossCfg, build_loss_cfg
from ltscale.core.errors import RecipeError
from ltscale.losses import _registry, classification_loss, loss_class, loss_defaults, loss_names
from ltscale.losses.base import ClassificationLoss
from ltscale.losses.options import LOSS_OPTIONS, LossOptions


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in the test go to a copy of the registry, dropped afterwards."""
    loss_names()  # discover the package's losses first
    monkeypatch.setattr(_registry.LOSSES, "_entries", dict(_registry.LOSSES._entries))
    monkeypatch.setattr(LOSS_OPTIONS, "_entries", dict(LOSS_OPTIONS._entries))


def test_a_loss_defined_in_one_class_is_usable_by_name(scratch_registry):
    @_registry.register_loss("tempered_ce")
    class TemperedCE(ClassificationLoss):
        class Config(LossOptions):
            temperature: float = Field(2.0, gt=0)

        def per_sample(self, logits, targets):
            return F.cross_entropy(logits / self.config.temperature, targets, reduction="none")

    assert "tempered_ce" in loss_names() and loss_class("tempered_ce") is TemperedCE
    assert loss_defaults("tempered_ce") == {"temperature": 2.0}
    logits, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
    fn = classification_loss("tempered_ce", [5, 3, 1], temperature=4.0)
    assert fn.name == "tempered_ce" and fn.log_prior.shape == (3,)
    torch.testing.assert_close(fn(logits, targets),
                               F.cross_entropy(logits / 4, targets, reduction="none"))
    with pytest.raises(RecipeError, match="'tempered_ce'.*temperature"):
        classification_loss("tempered_ce", [5, 3, 1], temperature=0)
    # the recipe section built now knows it, with its option beside the others
    cfg = build_loss_cfg()(name="tempered_ce", temperature=3.0, tau=0.5)
    assert cfg.options() == {"temperature": 3.0}


def test_the_temporary_loss_is_gone_afterwards():
    assert "tempered_ce" not in loss_names()
    with pytest.raises(ValidationError):
        LossCfg(name="tempered_ce")


def test_an_option_declared_differently_by_two_losses_is_refused(scratch_registry):
    @_registry.register_loss("bad_focal")
    class BadFocal(ClassificationLoss):
        class Config(LossOptions):
            gamma: float = Field(3.0, ge=0)  # focal declares gamma with another default

    with pytest.raises(TypeError, match="'gamma'"):
        build_loss_cfg()


def test_registering_a_non_loss_or_a_name_twice_fails(scratch_registry):
    with pytest.raises(TypeError):
        _registry.register_loss("not_a_loss")(object)
    with pytest.raises(ValueError, match="twice"):
        _registry.register_loss("ce")(type("OtherCE", (ClassificationLoss,), {}))


def test_recipe_section_keeps_its_flat_shape_and_bounds():
    cfg = LossCfg(name="la_sl", tau=0.5, lam=2.0, gamma=0.5, drw_start=0.5)
    assert cfg.options() == {"tau": 0.5, "lam": 2.0, "tau_sl": None}
    assert LossCfg().name == "la_sl"
    for bad in ({"lam": 0}, {"beta": 1.0}, {"drw_start": 1.5}, {"gamma": -1}, {"scale": 0},
                {"tau_sl": "median"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            LossCfg(**bad)


def test_every_loss_has_its_papers_defaults():
    # a literal table: a changed default must be a decision, made here too
    assert {name: loss_defaults(name) for name in loss_names()} == {
        "balanced_softmax": {},
        "cb": {"beta": 0.9999, "reduction": None},            # None: "mean" (Cui et al.)
        "cb_focal": {"beta": 0.9999, "gamma": 2.0, "reduction": None},
        "ce": {},
        "drw": {"drw_start": 0.8, "drw_beta": 0.9999, "reduction": None},  # "weight_sum"
        "focal": {"gamma": 2.0},                                # Lin et al. 2017
        "la": {"tau": 1.0},
        "la_sl": {"tau": 1.0, "lam": 4.0, "tau_sl": None},      # seed 000; None: log C
        "ldam": {"max_margin": 0.5, "scale": 30.0},
        "ldam_drw": {"max_margin": 0.5, "scale": 30.0, "drw_start": 0.8, "drw_beta": 0.9999,
                     "reduction": None},                        # "weight_sum"
        "sl": {"lam": 4.0, "tau_sl": None},
    }
    for name in loss_names():  # the recipe section's defaults are the losses'
        assert LossCfg(name=name).options() == loss_defaults(name), name


def test_each_loss_declares_the_classifier_it_assumes():
    from ltscale.losses import loss_class, loss_names

    kinds = {name: loss_class(name).classifier for name in loss_names()}
    assert set(kinds.values()) <= {"linear", "cosine"}
    assert {n for n, k in kinds.items() if k == "cosine"} == {"ldam", "ldam_drw"}
