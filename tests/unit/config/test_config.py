import pytest

from ltscale.config.loading import load_recipe, recipe_from_dict
from ltscale.core.errors import RecipeError


def test_quickstart_recipe_is_valid():
    r = load_recipe("recipes/quickstart.yaml")
    assert r.pretrain.method.name == "simsiam" and r.finetune.loss.name == "la_sl"
    assert r.finetune.loss.lam == 4.0 and r.finetune.lr == 0.003 and r.finetune.epochs == 10


def test_unknown_key_names_the_dotted_path():
    with pytest.raises(RecipeError, match=r"pretrain\.optim\.lrr: unknown key"):
        recipe_from_dict({"pretrain": {"optim": {"lrr": 0.1}}}, "r.yaml")


def test_wrong_type_and_bad_value_are_all_reported():
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({"pretrain": {"epochs": "many"}, "manifest": {"noise": "sym:2"},
                          "finetune": {"lr": -1}}, "r.yaml")
    text = str(err.value)
    assert "pretrain.epochs" in text and "valid integer" in text
    assert "manifest.noise" in text and "finetune.lr" in text and "greater than 0" in text


def test_unknown_method_is_refused():
    with pytest.raises(RecipeError, match="pretrain.method"):
        recipe_from_dict({"pretrain": {"method": {"name": "simclrr"}}})


def test_overrides_apply_and_are_validated(tmp_path):
    r = load_recipe("recipes/quickstart.yaml", ["pretrain.epochs=2", "manifest.noise=sym:0.2",
                                                "pretrain.method.proj_dim=64"])
    assert r.pretrain.epochs == 2 and r.manifest.noise == "sym:0.2"
    assert r.pretrain.method.proj_dim == 64
    with pytest.raises(RecipeError, match="pretrain.epochz"):
        load_recipe("recipes/quickstart.yaml", ["pretrain.epochz=2"])
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe("recipes/quickstart.yaml", ["pretrain.epochs"])


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
