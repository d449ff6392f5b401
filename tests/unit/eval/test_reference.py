"""`ltscale compare EXPERIMENT --reference RECIPE`: the paper's figures beside runs made here with
known metrics, matched by model tag and sweep point (mapping values included)."""

import mlflow
import pytest
import yaml

from ltscale.cli import main
from ltscale.config.loading import recipe_from_dict
from ltscale.eval.reference import cell_params, reference_rows, same_value

RECIPE = {
    "name": "ref", "finetune": {"mode": "linear"},
    "sweep": {"manifest.imbalance": ["exp:50", "exp:100"],
              "finetune": [{"mode": "proj_head", "lr": 0.003}, {"mode": "last_fc", "lr": 0.01}]},
    "reference": {"paper": "000 Karthik et al. 2021", "table": "Table 1", "cells": [
        {"where": {"manifest.imbalance": "exp:50",
                   "finetune": {"mode": "proj_head", "lr": 0.003}},
         "model": "simsiam + la_sl", "value": 69.3},
        {"where": {"manifest.imbalance": "exp:100",
                   "finetune": {"mode": "proj_head", "lr": 0.003}},
         "model": "simsiam + la_sl", "metric": "few", "value": 40.0},
        {"where": {"manifest.imbalance": "exp:100",
                   "finetune": {"mode": "last_fc", "lr": 0.01}},
         "model": "simsiam + la_sl", "value": 68.2}]},
}


def _run(client, exp, model, params, metrics, status="FINISHED"):
    rid = client.create_run(exp, tags={"ltscale.stage": "eval", "ltscale.model": model}).info.run_id
    for k, v in params.items():
        client.log_param(rid, k, v)
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    client.set_terminated(rid, status)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("ref")
    at50 = {"manifest.imbalance": "exp:50", "finetune.mode": "proj_head", "finetune.lr": 0.003}
    for seed, top1 in enumerate((0.70, 0.72, 0.74)):  # mean 72.0, sample std 2.0
        _run(client, exp, "simsiam + la_sl", at50 | {"seed": seed}, {"test/top1": top1})
    # not counted: another model, another point, a failed run
    _run(client, exp, "scratch + ce", at50, {"test/top1": 0.10})
    _run(client, exp, "simsiam + la_sl", at50 | {"finetune.lr": 0.01}, {"test/top1": 0.10})
    _run(client, exp, "simsiam + la_sl", at50, {"test/top1": 0.10}, status="FAILED")
    at100 = {"manifest.imbalance": "exp:100", "finetune.mode": "proj_head", "finetune.lr": 0.003}
    _run(client, exp, "simsiam + la_sl", at100, {"test/top1": 0.60, "test/few": 0.455})
    return uri


def test_numbers_match_by_value_and_text_exactly():
    assert same_value("1.0", "1") and same_value("0.003", "0.003") and same_value("ce", "ce")
    assert not same_value("exp:10", "exp:100") and not same_value(None, "None")


def test_mapping_values_stand_for_their_dotted_keys():
    assert cell_params({"finetune": {"mode": "last_fc", "lr": 0.01}, "seed": 1}) == {
        "finetune.mode": "last_fc", "finetune.lr": "0.01", "seed": "1"}


def test_paper_beside_ours_with_mean_std_runs_and_delta(store, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    out_file = tmp_path / "table.md"
    assert main(["compare", "ref", "--reference", str(path), "--tracking-uri", store,
                 "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "000 Karthik et al. 2021, Table 1: paper vs ours" in out
    rows = [line for line in out.splitlines() if line.startswith("| simsiam")]
    assert rows == [
        "| simsiam + la_sl | manifest.imbalance=exp:50, finetune.mode=proj_head, finetune.lr=0.003"
        " | top1 | 69.3 | 72.0 ± 2.0 | 3 | +2.7 |",
        "| simsiam + la_sl | manifest.imbalance=exp:100, finetune.mode=proj_head, "
        "finetune.lr=0.003 | few | 40.0 | 45.5 | 1 | +5.5 |",
        "| simsiam + la_sl | manifest.imbalance=exp:100, finetune.mode=last_fc, finetune.lr=0.01"
        " | top1 | 68.2 | not run | 0 |  |"]
    assert out_file.read_text().count("| simsiam + la_sl |") == 3


def test_a_recipe_without_reference_is_refused(tmp_path, store, capsys):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"name": "plain"}))
    assert main(["compare", "ref", "--reference", str(path), "--tracking-uri", store]) == 2
    assert "has no reference: section" in capsys.readouterr().err


def test_an_unknown_experiment_is_refused_naming_the_ones_there(store, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    assert main(["compare", "rfe", "--reference", str(path), "--tracking-uri", store]) == 2
    assert "no MLflow experiment 'rfe'" in capsys.readouterr().err


def test_without_runs_every_cell_is_not_run():
    rows = reference_rows(recipe_from_dict(RECIPE), [])
    assert [(r[3], r[4], r[5]) for r in rows] == [("69.3", "not run", "0"),
                                                 ("40.0", "not run", "0"),
                                                 ("68.2", "not run", "0")]


def test_out_over_the_recipe_read_is_refused_even_with_force(store, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    before = path.read_bytes()
    assert main(["compare", "ref", "--reference", str(path), "--tracking-uri", store,
                 "--out", str(path), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"--out {path} is the recipe this command reads" in err and err.count("\n") == 1
    assert path.read_bytes() == before
