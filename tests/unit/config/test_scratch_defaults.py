"""The from-scratch network's defaults as a literal table (they can only change together with this
file, docs/baselines.md and CHANGELOG.md), and how a recipe's own settings layer over them."""

import pytest

from ltscale.config.loading import recipe_from_dict
from ltscale.config.supervised import ScratchCfg

# docs/baselines.md: measured against a plain PyTorch script on Fashion-MNIST (exp:100, 40 %
# noise, ResNet-18, 5 epochs, three manifest draws); each differs from the old default
OPTIM = {"name": "sgd", "lr": 0.2, "scale_lr": True, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "decay_norm_bias": True, "schedule": "onecycle",
         "warmup_fraction": 0.3}
AUGMENT = {"preset": "supervised_cifar", "padding": 2}


def _scratch(section: dict | None = None) -> ScratchCfg:
    raw = {} if section is None else {"baselines": {"ce_scratch": section}}
    return recipe_from_dict(raw).baselines.ce_scratch


def test_defaults_are_the_table():
    s = _scratch()
    assert {k: getattr(s.optim, k) for k in OPTIM} == OPTIM
    assert {k: getattr(s.augment, k) for k in AUGMENT} == AUGMENT
    assert (s.epochs, s.batch_size, s.budget, s.backbone, s.balance) == \
        (10, 256, "epochs", None, "instance")


def test_a_recipe_replaces_only_the_fields_it_sets():
    s = _scratch({"optim": {"lr": 0.1}, "augment": {"flip": False}})
    assert s.optim.lr == 0.1 and s.optim.schedule == "onecycle" and s.optim.nesterov
    assert s.augment.preset == "supervised_cifar" and s.augment.padding == 2
    assert s.augment.flip is False


def test_an_explicit_warmup_in_epochs_wins_over_the_default_share():
    s = _scratch({"optim": {"warmup_epochs": 0.5}})
    assert s.optim.warmup_fraction is None and s.optim.warmup_for(5) == 0.5
    assert _scratch().optim.warmup_for(5) == pytest.approx(1.5)


def test_the_old_behaviour_is_one_section_away():
    """CHANGELOG's "to get the old behaviour" setting gives the old optimizer and view."""
    old = _scratch({"optim": {"lr": 0.1, "nesterov": False, "decay_norm_bias": False,
                              "schedule": "cosine", "warmup_epochs": 1},
                    "augment": {"padding": 4}})
    assert (old.optim.lr, old.optim.nesterov, old.optim.decay_norm_bias, old.optim.schedule,
            old.optim.warmup_for(5), old.augment.padding) == (0.1, False, False, "cosine", 1, 4)


def test_another_optimizer_or_preset_drops_the_defaults():
    s = _scratch({"optim": {"name": "adam", "lr": 0.001}, "augment": {"preset": "supervised"}})
    assert s.optim.schedule == "cosine" and s.optim.warmup_fraction is None
    assert s.augment.padding is None


def test_a_dumped_recipe_validates_to_the_same_section():
    s = _scratch({"optim": {"warmup_epochs": 2}})
    again = recipe_from_dict({"baselines": {"ce_scratch": s.model_dump()}}).baselines.ce_scratch
    assert again == s


def test_assigning_a_field_keeps_the_sections_typed():
    s = _scratch({"optim": {"lr": 0.1}})
    s.epochs = 5  # validate_assignment re-runs the section's validators
    assert type(s.optim).__name__ == "OptimCfg" and type(s.augment).__name__ == "AugmentCfg"
    assert s.optim.lr == 0.1 and s.optim.schedule == "onecycle"
