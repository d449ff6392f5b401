"""The whole quickstart pipeline at a reduced size on the real Fashion-MNIST files."""

import json
import math

import pytest

from ltscale.cli import main
from tests.conftest import FASHION, needs_fashion

pytestmark = [pytest.mark.smoke, needs_fashion]

REDUCED = [
    "manifest.max_per_class=600", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=6",
    "pretrain.batch_size=64", "pretrain.workers=0", "pretrain.knn.bank_per_class=20",
    "pretrain.knn.queries=200", "finetune.workers=0",
    "baselines.ce_scratch.budget=epochs", "baselines.ce_scratch.epochs=1",
    "baselines.ce_scratch.max_steps_per_epoch=6",
    "baselines.ce_scratch.batch_size=64",
]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    work = tmp_path_factory.mktemp("qs")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rc = main(["run", "recipes/quickstart.yaml", f"output_dir={work / 'run'}",
               f"data.shards={work / 'shards'}", f"tracking.uri={uri}", *REDUCED])
    assert rc == 0
    return work, uri


def test_report_has_every_model_and_sane_numbers(quickstart):
    work, _ = quickstart
    report = json.loads((work / "run" / "report" / "report.json").read_text())
    results = report["results"]
    assert set(results) == {"simsiam + la_sl", "random encoder + la_sl", "scratch + la_sl"}
    for name, m in results.items():
        assert 0.0 <= m["top1"] <= 1.0 and m["top5"] >= m["top1"]
        assert len(m["per_class"]) == 10
        assert sum(map(sum, m["confusion"])) == 10_000  # the whole balanced test split
        assert m["top1"] == pytest.approx(sum(m["per_class"]) / 10, abs=1e-6)  # balanced test
    # frozen-feature heads on 1,490 images beat chance (10 %) by a wide margin
    assert results["random encoder + la_sl"]["top1"] > 0.3
    assert results["simsiam + la_sl"]["top1"] > 0.3
    # γ = 100 over n_max = 600: counts 600 … 6; Many > 100, Medium 20-100, Few < 20
    assert report["train_counts"] == [600, 359, 215, 129, 77, 46, 27, 16, 10, 6]
    groups = results["scratch + la_sl"]["groups"]
    assert groups == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    md = (work / "run" / "report" / "report.md").read_text()
    assert "| simsiam + la_sl |" in md and (work / "run" / "report" / "per_class.png").stat().st_size > 0


def test_mlflow_has_a_parent_run_with_a_child_per_stage(quickstart):
    import mlflow

    work, uri = quickstart
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id}
    assert set(children) == {"data", "pretrain", "finetune", "eval", "baseline_random_encoder",
                             "baseline_ce_scratch"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.params["pretrain.epochs"] == "1"
    assert parent.data.params["manifest.imbalance"] == "exp:100"
    manifest_hash = children["data"].data.tags["ltscale.manifest_hash"]
    assert all(r.data.tags["ltscale.manifest_hash"] == manifest_hash for r in children.values())
    report = json.loads((work / "run" / "report" / "report.json").read_text())
    assert children["eval"].data.metrics["test/top1"] == pytest.approx(
        report["results"]["simsiam + la_sl"]["top1"])
    # each evaluated model is tagged with its report name (compare --reference matches on it)
    assert {n: r.data.tags.get("ltscale.model") for n, r in children.items()
            if "ltscale.model" in r.data.tags} == {
        "eval": "simsiam + la_sl", "baseline_random_encoder": "random encoder + la_sl",
        "baseline_ce_scratch": "scratch + la_sl"}
    assert math.isfinite(children["pretrain"].data.metrics["epoch/loss"])
    assert "knn/top1" in children["pretrain"].data.metrics
    assert children["data"].data.metrics["manifest/samples"] == 1485


def test_stages_run_alone_from_the_pipeline_outputs(quickstart, capsys):
    work, uri = quickstart
    common = [f"output_dir={work / 'alone'}", f"data.shards={work / 'shards'}",
              f"tracking.uri={uri}", *REDUCED]
    encoder = work / "run" / "pretrain" / "encoder.pt"
    assert main(["finetune", "recipes/quickstart.yaml", "--from", str(encoder), *common]) == 0
    head = work / "alone" / "finetune" / "head.pt"
    assert head.exists()
    assert main(["eval", "recipes/quickstart.yaml", "--from", str(head), *common]) == 0
    assert "| model | top-1 |" in capsys.readouterr().out


def test_missing_data_directory_is_one_clear_paragraph(tmp_path, capsys):
    rc = main(["run", "recipes/quickstart.yaml", f"output_dir={tmp_path}",
               f"data.shards={tmp_path / 'shards'}", "--data", str(tmp_path / "absent"),
               "--no-track"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "data directory not found" in err and "apt-get install dataset-fashion-mnist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "shards").exists()


def test_recipe_typo_fails_before_any_work(tmp_path, capsys):
    rc = main(["run", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}",
               "pretrain.epocs=3", "--no-track"])
    assert rc == 2
    assert "pretrain.epocs: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_build_and_manifest_commands(tmp_path, capsys):
    out = tmp_path / "fm"
    assert main(["data", "build", "idx", str(FASHION), "--out", str(out)]) == 0
    assert main(["manifest", "make", str(out), "--imbalance", "exp:100", "--noise", "sym:0.4",
                 "--seed", "0", "--out", str(tmp_path / "m.npz")]) == 0
    capsys.readouterr()
    assert main(["manifest", "stats", str(tmp_path / "m.npz"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["class_counts_clean"] == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert abs(stats["noise_rate"] - 0.36) < 0.01
    card = json.loads((out / "card.json").read_text())
    assert card["splits"]["train"]["class_counts"] == [6000] * 10
    assert card["splits"]["test"]["samples"] == 10_000
