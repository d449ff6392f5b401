"""`ltscale bench baseline` at a toy size: ltscale's from-scratch network, the plain script at the
same settings and the plain script's own defaults, on the same manifests."""

import json

import pytest
import yaml

from ltscale.bench.baseline import same_settings
from ltscale.bench.plain import augment
from ltscale.cli import main
from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import RecipeError
from ltscale.stages.context import make_context
from tests.conftest import tiny_pipeline_recipe

pytestmark = pytest.mark.smoke


def _raw(tiny_idx, tmp_path, **optim) -> dict:
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    raw["manifest"] = {"imbalance": "none", "noise": "none"}
    raw["baselines"]["ce_scratch"] = {
        "enabled": True, "epochs": 2, "batch_size": 8, "loss": {"name": "la"},
        "backbone": {"name": "resnet18", "cifar_stem": False},
        "optim": {"lr": 0.1, "warmup_epochs": 0.5, "schedule": "onecycle", **optim},
        "augment": {"preset": "supervised_cifar", "padding": 1}}
    return raw


def test_same_settings_translate_the_recipe(tiny_idx, tmp_path):
    ctx = make_context(recipe_from_dict(_raw(tiny_idx, tmp_path, nesterov=True,
                                             decay_norm_bias=True)), progress=False)
    s = same_settings(ctx, 2)
    assert (s.network, s.epochs, s.batch_size, s.schedule, s.padding, s.loss) == \
        ("resnet18", 2, 8, "onecycle", 1, "la")
    assert s.lr == pytest.approx(0.1 * 8 / 256)  # scale_lr: the recipe's lr is per 256
    assert s.warmup == pytest.approx(0.25) and s.nesterov and s.decay_norm_bias and s.drop_last
    raw = _raw(tiny_idx, tmp_path)
    raw["baselines"]["ce_scratch"]["optim"] = {}  # the defaults: a 30 % warm-up share
    assert same_settings(make_context(recipe_from_dict(raw), progress=False), 5).warmup == \
        pytest.approx(0.3)
    raw["baselines"]["ce_scratch"]["loss"] = {"name": "la_sl"}
    with pytest.raises(RecipeError, match="la_sl"):
        same_settings(make_context(recipe_from_dict(raw), progress=False), 2)


def test_plain_augment_pads_crops_and_flips_within_bounds():
    import torch

    x = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment(x, 1, True, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert augment(x, 0, False, g).equal(x)


def test_bench_baseline_reports_three_networks_per_draw(tiny_idx, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_raw(tiny_idx, tmp_path)))
    assert main(["bench", "baseline", str(path), "--draws", "0,1", "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert [r["draw"] for r in result["rows"]] == [0, 1]
    for row in result["rows"]:
        for k in ("ltscale", "same", "plain"):
            assert 0 <= row[k]["top1"] <= 1 and row[k]["images_per_s"] > 0
    assert "plain script, same settings" in out.err  # the table goes to stderr with --json
    assert result["gap"]["n"] == 2 and "paired over 2 run(s)" in out.err


def test_bench_baseline_runs_each_draw_once_per_training_seed(tiny_idx, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_raw(tiny_idx, tmp_path)))
    assert main(["bench", "baseline", str(path), "--draws", "3", "--seeds", "5,6",
                 "--networks", "same", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["draw"], r["seed"]) for r in result["rows"]] == [(3, 5), (3, 6)]
    assert all(set(r) == {"draw", "seed", "manifest", "same"} for r in result["rows"])
    assert result["rows"][0]["manifest"] == result["rows"][1]["manifest"]  # one draw
    assert result["rows"][0]["same"] != result["rows"][1]["same"]  # two training seeds
    assert "gap" not in result  # no pair to compare
    assert main(["bench", "baseline", str(path), "--networks", "same,other"]) == 2
    assert "unknown network(s) other" in capsys.readouterr().err
