"""`ltscale run` with several seeds: one run per seed, a report with mean ± std and the
noisy/clean separation of the SuperLoss confidences."""

import json

from ltscale.config.loading import recipe_from_dict
from ltscale.pipeline import run_pipeline
from ltscale.track import NullTracker
from tests.conftest import tiny_pipeline_recipe


def test_seeds_give_one_output_per_seed_and_mean_std_in_the_report(tiny_idx, tmp_path):
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    raw["data"]["loader"] = {"check": "checksum"}
    recipe = recipe_from_dict(raw | {"name": "seeds", "seeds": [0, 1]})
    summary = run_pipeline(recipe, NullTracker(), progress=False)
    assert summary["seeds"] == [0, 1]
    for s in (0, 1):
        assert (tmp_path / "out" / f"seed{s}" / "finetune" / "head.pt").exists()
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    (result,) = report["results"].values()
    per_seed = result["seeds"]["values"]["top1"]
    assert len(per_seed) == 2
    assert abs(result["top1"] - sum(per_seed) / 2) < 1e-12
    assert "±" in md
    # σ* separation of noisy and clean samples, one entry per seed
    assert "simsiam + la_sl (seed 0)" in md and "simsiam + la_sl (seed 1)" in md
