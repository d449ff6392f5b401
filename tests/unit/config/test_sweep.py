"""Recipe sweeps (a grid of runs from one recipe) and the paper's reference figures."""

import pytest
import yaml

from ltscale.config.sweeps import expand, grid, point_label
from ltscale.core.errors import RecipeError

BASE = {"name": "grid", "output_dir": "runs/grid",
        "manifest": {"imbalance": "exp:100", "noise": "sym:0.4"},
        "finetune": {"mode": "linear"}}


def _write(tmp_path, **extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE | extra, sort_keys=False))
    return path


def test_grid_is_the_product_with_the_first_key_slowest():
    assert grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
    assert grid({}) == [{}]


def test_each_point_is_its_own_recipe_in_its_own_folder(tmp_path):
    path = _write(tmp_path, sweep={"manifest.noise": ["sym:0.2", "sym:0.6"],
                                   "finetune.loss.name": ["ce", "la_sl"]})
    points = expand(path, ["seed=3"])
    assert [p for p, _ in points] == grid({"manifest.noise": ["sym:0.2", "sym:0.6"],
                                           "finetune.loss.name": ["ce", "la_sl"]})
    for point, r in points:
        assert r.manifest.noise == point["manifest.noise"]
        assert r.finetune.loss.name == point["finetune.loss.name"]
        assert r.seed == 3 and r.sweep == {} and r.reference is None
        assert r.output_dir == f"runs/grid/{point_label(point)}"
    assert len({r.output_dir for _, r in points}) == 4
    assert point_label({"manifest.noise": "sym:0.2"}) == "manifest.noise=sym-0.2"


def test_without_a_sweep_the_recipe_is_run_as_is(tmp_path):
    ((point, r),) = expand(_write(tmp_path))
    assert point == {} and r.output_dir == "runs/grid"


def test_a_value_that_does_not_fit_its_key_names_the_point(tmp_path):
    path = _write(tmp_path, sweep={"finetune.loss.name": ["ce", "hinge"]})
    with pytest.raises(RecipeError, match=r"(?s)sweep point finetune.loss.name=hinge:.*"
                                          r"finetune.loss.name"):
        expand(path)


def test_an_unknown_sweep_key_is_refused_with_its_path(tmp_path):
    with pytest.raises(RecipeError, match="manifest.nosie: unknown key"):
        expand(_write(tmp_path, sweep={"manifest.nosie": ["sym:0.2"]}))


def test_reference_cells_must_sit_on_the_grid(tmp_path):
    ref = {"paper": "000", "table": "Table 1",
           "cells": [{"where": {"manifest.imbalance": "exp:50"}, "model": "simsiam + la_sl",
                      "value": 69.3}]}
    ok = _write(tmp_path, sweep={"manifest.imbalance": ["none", "exp:50"]}, reference=ref)
    assert len(expand(ok)) == 2
    bad = _write(tmp_path, sweep={"manifest.imbalance": ["none"]}, reference=ref)
    with pytest.raises(RecipeError, match="not one of the sweep's values"):
        expand(bad)
    ref["cells"][0]["value"] = 169.3
    with pytest.raises(RecipeError, match="reference.cells.0.value"):
        expand(_write(tmp_path, sweep={"manifest.imbalance": ["exp:50"]}, reference=ref))
