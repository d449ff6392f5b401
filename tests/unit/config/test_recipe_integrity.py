"""Nothing silently changes what a recipe says (issue #29): a key given twice, a flag or a decimal
number where an integer belongs, a count no machine finishes, a seed given twice are refused with
one line naming the file, key and value; an unknown key names the nearest valid one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ltscale.cli import main as cli
from ltscale.config.loading import load_recipe, recipe_from_dict
from ltscale.core.errors import RecipeError
from ltscale.core.strict import BATCH_MAX, EPOCHS_MAX, STEPS_MAX

STAGE = {"name": "a", "method": {"name": "simsiam"}}


def _refused(raw: dict, *needles: str) -> str:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.yaml")
    text = str(err.value)
    assert "recipe r.yaml is invalid" in text
    for needle in needles:
        assert needle in text, text
    return text


# --- a key given twice ----------------------------------------------------------------------
@pytest.mark.parametrize("text,key,lines", [
    ("name: a\npretrain:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n", "pretrain.epochs", (3, 5)),
    ("seed: 1\nname: a\nseed: 2\n", "seed", (1, 3)),
    ("pretrain:\n  stages:\n    - name: a\n      method: {name: simsiam, proj_dim: 8, "
     "proj_dim: 16}\n", "pretrain.stages.0.method.proj_dim", (4, 4)),
    ('seed: 1\n"seed": 2\n', "seed", (1, 2)),   # quoted or not, the same key
])
def test_a_key_given_twice_is_refused_naming_it_both_lines_and_the_file(tmp_path, text, key, lines):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    msg = str(err.value)
    assert str(recipe) in msg and f"key {key} is given twice" in msg, msg
    assert f"lines {lines[0]} and {lines[1]}" in msg, msg
    assert "\n" not in msg and recipe.read_text() == text


def test_anchors_merge_keys_and_equal_keys_in_separate_mappings_still_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  epochs: 2\n  optim: &o {lr: 0.1}\nfinetune:\n  epochs: 3\n"
                      "baselines:\n  ce_scratch:\n    epochs: 4\n    optim:\n      <<: *o\n"
                      "      lr: 0.2\n")
    r = load_recipe(recipe)
    assert (r.pretrain.epochs, r.finetune.epochs, r.baselines.ce_scratch.epochs) == (2, 3, 4)
    assert r.pretrain.optim.lr == 0.1 and r.baselines.ce_scratch.optim.lr == 0.2


def test_an_override_with_a_key_twice_is_refused():
    with pytest.raises(RecipeError, match=r"key epochs is given twice, on lines 1 and 1"):
        load_recipe("recipes/quickstart.yaml", ["pretrain={epochs: 1, epochs: 2}"])


# --- types: no flag for a number, no decimal number for an integer ----------------------------
@pytest.mark.parametrize("raw,key,got,gist", [
    ({"pretrain": {"epochs": True}}, "pretrain.epochs", "True", "not a flag"),
    ({"pretrain": {"epochs": 2.0}}, "pretrain.epochs", "2.0", "not a decimal number"),
    ({"pretrain": {"epochs": 2.5}}, "pretrain.epochs", "2.5", "not a decimal number"),
    ({"finetune": {"epochs": False}}, "finetune.epochs", "False", "not a flag"),
    ({"pretrain": {"optim": {"lr": True}}}, "pretrain.optim.lr", "True", "not a flag"),
    ({"finetune": {"lr": False}}, "finetune.lr", "False", "not a flag"),
    ({"data": {"channels": True}}, "data.channels", "True", "not a flag"),      # Literal[1, 3]
    ({"engine": {"zero_stage": 1.0}}, "engine.zero_stage", "1.0", "not a decimal"),
    ({"seeds": [0, True]}, "seeds.1", "True", "not a flag"),
    ({"data": {"mean": [True]}}, "data.mean.0", "True", "not a flag"),
    ({"pretrain": {"augment": {"crop_scale": [True, 1.0]}}}, "pretrain.augment.crop_scale.0",
     "True", "not a flag"),
    ({"pretrain": {"method": {"name": "simclr", "proj_dim": 64.0}}},
     "pretrain.method.simclr.proj_dim", "64.0", "not a decimal"),
    ({"pretrain": {"stages": [{**STAGE, "epochs": True}]}}, "pretrain.stages.0.epochs", "True",
     "not a flag"),
    ({"finetune": {"loss": {"name": "la", "tau": True}}}, "finetune.loss.tau", "True",
     "not a flag"),
])
def test_a_value_is_never_converted_silently(raw, key, got, gist):
    _refused(raw, f"  {key}: ", gist, f"(got {got})")


def test_the_sections_other_errors_are_reported_with_a_type_error():
    text = _refused({"pretrain": {"epochs": True, "batch_size": -1, "epochz": 3},
                     "seed": 1.0, "eval": {"ece_bins": 0}})
    for key in ("pretrain.epochs", "pretrain.batch_size", "pretrain.epochz", "seed",
                "eval.ece_bins"):
        assert f"  {key}: " in text, text
    assert text.count("pretrain.epochs") == 1


def test_integers_fill_floats_lists_fill_tuples_and_overrides_keep_their_types():
    r = recipe_from_dict({"pretrain": {"optim": {"lr": 1, "weight_decay": "1e-4"},
                                       "augment": {"crop_scale": [0.3, 1], "flip": True}},
                          "finetune": {"lr": 1}})
    assert r.pretrain.optim.lr == 1.0 and r.pretrain.optim.weight_decay == 1e-4  # YAML: a string
    assert r.pretrain.augment.crop_scale == (0.3, 1.0) and r.pretrain.augment.flip is True
    r = load_recipe("recipes/quickstart.yaml", ["pretrain.epochs=8", "pretrain.optim.lr=1",
                                                "pretrain.augment.crop_scale=[0.3, 1.0]"])
    assert r.pretrain.epochs == 8 and type(r.pretrain.epochs) is int
    assert r.pretrain.optim.lr == 1.0 and r.pretrain.augment.crop_scale == (0.3, 1.0)
    with pytest.raises(RecipeError, match=r"pretrain\.epochs: a number is expected, not a flag"):
        load_recipe("recipes/quickstart.yaml", ["pretrain.epochs=true"])


def test_an_assignment_is_held_to_the_same_types():
    r = recipe_from_dict({})
    r.seed = 3
    with pytest.raises(ValidationError, match="not a flag"):
        r.pretrain.epochs = True
    with pytest.raises(ValidationError, match="not a decimal number"):
        r.finetune.batch_size = 64.0
    assert r.pretrain.epochs == 800 and r.finetune.batch_size == 256


# --- counts no machine finishes -------------------------------------------------------------
@pytest.mark.parametrize("raw,key,bound", [
    ({"pretrain": {"epochs": 1_000_000_000}}, "pretrain.epochs", EPOCHS_MAX),
    ({"finetune": {"epochs": EPOCHS_MAX + 1}}, "finetune.epochs", EPOCHS_MAX),
    ({"finetune": {"crt_epochs": 10**9}}, "finetune.crt_epochs", EPOCHS_MAX),
    ({"selftrain": {"epochs": 10**9}}, "selftrain.epochs", EPOCHS_MAX),
    ({"baselines": {"ce_scratch": {"epochs": 10**9}}}, "baselines.ce_scratch.epochs", EPOCHS_MAX),
    ({"pretrain": {"stages": [{**STAGE, "epochs": 10**9}]}}, "pretrain.stages.0.epochs",
     EPOCHS_MAX),
    ({"pretrain": {"optim": {"warmup_epochs": 1e9}}}, "pretrain.optim.warmup_epochs", EPOCHS_MAX),
    ({"pretrain": {"batch_size": BATCH_MAX + 1}}, "pretrain.batch_size", BATCH_MAX),
    ({"finetune": {"batch_size": 10**12}}, "finetune.batch_size", BATCH_MAX),
    ({"pretrain": {"max_steps_per_epoch": 10**12}}, "pretrain.max_steps_per_epoch", STEPS_MAX),
])
def test_a_count_no_machine_finishes_is_refused_with_its_bound(raw, key, bound):
    _refused(raw, f"  {key}: at most {bound}")


def test_counts_at_their_bound_and_many_seeds_up_to_the_limit_load():
    r = recipe_from_dict({"pretrain": {"epochs": EPOCHS_MAX, "batch_size": BATCH_MAX},
                          "seeds": list(range(1000))})
    assert r.pretrain.epochs == EPOCHS_MAX and len(r.seeds) == 1000
    _refused({"seeds": list(range(1001))}, "  seeds: ", "at most 1000 items")


# --- seeds given twice ----------------------------------------------------------------------
@pytest.mark.parametrize("seeds,named", [([0, 0], "seed 0 "), ([3, 1, 3], "seed 3 "),
                                         ([2, 5, 2, 5], "seed 2, 5 ")])
def test_a_seed_given_twice_is_refused_naming_it(seeds, named):
    _refused({"seeds": seeds}, "  seeds: ", named, "more than once")


# --- unknown keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw,key,near", [
    ({"pretrain": {"epochz": 3}}, "pretrain.epochz", "epochs"),
    ({"pretrian": {}}, "pretrian", "pretrain"),
    ({"pretrain": {"method": {"name": "simclr", "temprature": 0.1}}},
     "pretrain.method.simclr.temprature", "temperature"),
    ({"pretrain": {"stages": [{**STAGE, "optim": {"lrr": 0.1}}]}}, "pretrain.stages.0.optim.lrr",
     "lr"),
    ({"finetune": {"loss": {"nam": "ce"}}}, "finetune.loss.nam", "name"),
    ({"baselines": {"ce_scratch": {"backbone": {"nme": "x"}}}},
     "baselines.ce_scratch.backbone.nme", "name"),
])
def test_an_unknown_key_names_the_nearest_valid_one(raw, key, near):
    _refused(raw, f"  {key}: unknown key (did you mean {near}? ")


def test_an_unknown_key_far_from_any_gets_no_guess():
    text = _refused({"pretrain": {"zzzzzz": 1}}, "pretrain.zzzzzz: unknown key")
    assert "did you mean" not in text


# --- the command line -----------------------------------------------------------------------
@pytest.mark.parametrize("text,needles", [
    ("pretrain:\n  epochs: 2\n  epochs: 3\n", ["key pretrain.epochs is given twice",
                                               "lines 2 and 3"]),
    ("pretrain:\n  epochs: true\n", ["pretrain.epochs: a number is expected, not a flag"]),
    ("pretrain:\n  epochs: 2.5\n", ["pretrain.epochs: an integer is expected"]),
    ("pretrain:\n  epochs: 1000000000\n", ["pretrain.epochs: at most 100000"]),
    ("seeds: [0, 0]\n", ["seeds: seed 0 is given more than once"]),
    ("pretrain:\n  epochz: 3\n", ["pretrain.epochz: unknown key (did you mean epochs?"]),
])
def test_the_cli_refuses_before_any_work_with_exit_status_2(tmp_path, monkeypatch, capsys, text,
                                                            needles):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    capsys.readouterr()
    code = cli(["submit", str(recipe), "--dry-run"])  # loads the recipe; runs nothing
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"ltscale: error: recipe {recipe} is") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


# --- validation is light --------------------------------------------------------------------
_NO_TORCH = r"""
import glob, sys
from ltscale.config.loading import load_recipe
from ltscale.core.errors import RecipeError
recipes = sorted(glob.glob("recipes/**/*.yaml", recursive=True))
assert len(recipes) > 10, recipes
for path in recipes:
    load_recipe(path)
try:
    load_recipe(sys.argv[1])
except RecipeError as e:
    assert "did you mean epochs" in str(e), e
else:
    raise SystemExit("the bad recipe was accepted")
from ltscale.config.supervised import LossCfg
from ltscale.config.pretrain import PretrainCfg
LossCfg(name="ldam", scale=10.0); PretrainCfg(method={"name": "sbcl", "k": 3})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print("LOADED", loaded)
"""


def test_validating_recipes_imports_no_torch(tmp_path):
    """Recipe validation (every shipped recipe, and a schema error) must not import torch or
    torchvision: a mistyped key is reported in a fraction of a second, not after the seconds
    torch takes to load. Options of methods, losses and backbones are declared torch-free."""
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npretrain:\n  epochz: 3\n")
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(bad)], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
