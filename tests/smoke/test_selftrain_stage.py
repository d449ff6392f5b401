"""`ltscale run` with self-training on the real Fashion-MNIST files, reduced further than
recipes/smoke/selftrain.yaml: the stage is its own MLflow child run, logs the pseudo-label
figures and puts the student in the report beside its teacher."""

import json

import numpy as np
import pytest

from ltscale.cli import main
from tests.conftest import needs_fashion

pytestmark = [pytest.mark.smoke, needs_fashion]

REDUCED = [
    "manifest.max_per_class=200", "manifest.unlabeled.multiple=2", "pretrain.max_steps_per_epoch=2",
    "finetune.epochs=1", "baselines.ce_scratch.epochs=3", "selftrain.epochs=1",
    "selftrain.max_steps_per_epoch=10", "selftrain.threshold=0.5", "selftrain.weight=0.5",
]


def test_selftrain_stage_in_the_pipeline(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    assert main(["run", "recipes/smoke/selftrain.yaml", f"output_dir={out}",
                 f"data.shards={tmp_path / 'shards'}", f"tracking.uri={uri}", *REDUCED]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    (student,) = [n for n in report["results"] if n.startswith("self-training student")]
    assert "scratch + ce teacher" in student and "ω = 0.5" in student and "p ≥ 0.5" in student
    assert "scratch + ce" in report["results"]  # the teacher's own row

    saved = np.load(out / "selftrain" / "pseudo_labels.npz")
    kept = saved["labels"] >= 0
    assert (saved["confidence"][kept] >= 0.5).all() and (saved["confidence"][~kept] < 0.5).all()

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("ltscale.stage") == "selftrain"]
    m = run.data.metrics
    assert m["selftrain/pool"] == len(saved["rows"]) and m["selftrain/kept"] == kept.sum()
    assert 0.0 <= m["selftrain/pseudo_accuracy"] <= 1.0  # Fashion-MNIST's clean labels are known
    assert m["selftrain/train_samples"] == sum(report["train_counts"]) + kept.sum()  # D_L + kept
    assert run.data.params["selftrain.weight"] == "0.5"
    assert m["test/top1"] == pytest.approx(report["results"][student]["top1"], abs=1e-6)
