"""The supervised baseline as a stage of its own (`ltscale scratch`), its own network, and the
compute budget every model of a report carries (`ltscale run` with ``budget: match``)."""

import json

import mlflow
import pytest
import torch
import yaml

from ltscale.cli import main
from ltscale.config.loading import recipe_from_dict
from ltscale.stages.budget import loop_plan, pipeline_plan, scratch_epochs
from ltscale.stages.context import make_context
from tests.conftest import tiny_pipeline_recipe

pytestmark = pytest.mark.smoke


def _recipe(tiny_idx, tmp_path, **scratch) -> dict:
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    raw["baselines"] = {"random_encoder": False, "ce_scratch": {
        "enabled": True, "epochs": 2, "batch_size": 8, "loss": {"name": "ce"},
        "backbone": {"name": "cifar_resnet8", "cifar_stem": False},
        "optim": {"lr": 0.1, "warmup_epochs": 0}, **scratch}}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "scratch"}
    return raw


def _write(raw: dict, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_scratch_command_trains_its_own_network_without_pretraining(tiny_idx, tmp_path):
    raw = _recipe(tiny_idx, tmp_path, extra_losses=["la"])
    assert main(["scratch", str(_write(raw, tmp_path))]) == 0
    out = tmp_path / "out"
    assert not (out / "pretrain").exists() and not (out / "finetune").exists()
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["results"]) == {"scratch + ce", "scratch + la"}
    n = len(make_context(recipe_from_dict(raw), progress=False).manifest.rows("labeled")[0])
    plan = loop_plan(n, 8, 2)
    for m in report["results"].values():  # measured = planned: 2 epochs of whole batches
        assert (m["budget"]["images"], m["budget"]["steps"]) == (plan.images, plan.steps)
        assert m["budget"]["seconds"] > 0
    assert "## Budget" in (out / "report" / "report.md").read_text()
    # the baseline's own network, recorded in its encoder file
    saved = torch.load(out / "ce_scratch" / "encoder.pt", weights_only=True)
    assert saved["backbone"] == "cifar_resnet8" and saved["feat_dim"] == 64
    # MLflow: a parent, the data stage and one child run per network, each with its budget
    runs = mlflow.MlflowClient(raw["tracking"]["uri"]).search_runs(
        [mlflow.get_experiment_by_name("scratch").experiment_id])
    stages = sorted(r.data.tags["ltscale.stage"] for r in runs)
    assert stages == ["baseline_ce_scratch", "baseline_scratch_la", "data", "pipeline"]
    child = next(r for r in runs if r.data.tags["ltscale.stage"] == "baseline_ce_scratch")
    assert child.data.metrics["budget/images"] == plan.images


def test_scratch_command_refuses_a_recipe_without_the_baseline(tiny_idx, tmp_path, capsys):
    raw = _recipe(tiny_idx, tmp_path)
    raw["baselines"]["ce_scratch"]["enabled"] = False
    assert main(["scratch", str(_write(raw, tmp_path))]) != 0
    assert "baselines.ce_scratch.enabled" in capsys.readouterr().err


def test_matched_budget_gives_scratch_at_least_the_pipelines_images(tiny_idx, tmp_path):
    raw = _recipe(tiny_idx, tmp_path, budget="match")
    raw["pretrain"]["epochs"] = 3
    ctx = make_context(recipe_from_dict(raw), progress=False)
    epochs = scratch_epochs(ctx)
    n = len(ctx.manifest.rows("labeled")[0])
    pipeline = pipeline_plan(ctx).images
    assert loop_plan(n, 8, epochs).images >= pipeline > loop_plan(n, 8, epochs - 1).images
    assert main(["run", str(_write(raw, tmp_path))]) == 0
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    two_stage = report["results"]["simsiam + la_sl"]["budget"]
    scratch = report["results"]["scratch + ce"]["budget"]
    assert two_stage["images"] == pipeline  # measured pretraining + head = planned
    assert scratch["images"] >= two_stage["images"]
    assert scratch["steps"] == epochs * (n // 8)
    assert f"budget match, {epochs} epochs" in report["context"]["scratch budget"]
