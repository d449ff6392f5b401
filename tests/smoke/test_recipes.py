"""Every CI-sized recipe under recipes/smoke/ runs `ltscale run` end to end on the bundled data
(every point of its sweep, if it has one).

The tests are generated from the folder: a recipe added there is smoke-tested without touching
this file. Shards are built once per data source for the whole session."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ltscale.cli import main
from ltscale.config.loading import load_recipe
from ltscale.config.sweeps import expand
from tests.conftest import needs_fashion

pytestmark = [pytest.mark.smoke, needs_fashion]

ROOT = Path(__file__).resolve().parents[2]
SMOKE = sorted((ROOT / "recipes" / "smoke").glob("*.yaml"))


@pytest.fixture(scope="session")
def shards_for(tmp_path_factory):
    """The shard folder for a recipe's data source (one per distinct source in the session)."""
    base = tmp_path_factory.mktemp("smoke-shards")

    def get(recipe) -> Path:
        key = json.dumps(recipe.data.source.model_dump(), sort_keys=True)
        return base / hashlib.sha256(key.encode()).hexdigest()[:12]

    return get


@pytest.mark.parametrize("path", SMOKE, ids=[p.stem for p in SMOKE])
def test_smoke_recipe_runs_end_to_end(path, tmp_path, shards_for):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name}: first line must say what it is the twin of"
    recipe = load_recipe(path)
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.shards={shards_for(recipe)}",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    rc = main(["run", str(path), *overrides])
    assert rc == 0
    for point, r in expand(path, overrides):  # one report per sweep point (one without a sweep)
        report = json.loads((Path(r.output_dir) / "report" / "report.json").read_text())
        assert report["results"], f"{path.name} {point}: no model was evaluated"
        chance = 1 / len(report["train_counts"])
        for name, m in report["results"].items():
            # a few steps on real data: every model is a probability and beats chance clearly
            assert 1.5 * chance < m["top1"] <= 1.0, (path.name, point, name, m["top1"])


def test_every_recipe_in_the_repository_validates():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        raw = yaml.safe_load(path.read_text())
        assert isinstance(raw, dict), path
        expand(path)  # every sweep point; RecipeError names the key when a recipe is out of date
