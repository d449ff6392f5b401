"""`ltscale pretrain` → `ltscale finetune` (proj_head + cRT) → `ltscale eval` on Fashion-MNIST."""

import json

import pytest

from ltscale.cli import main
from ltscale.engine.checkpoint import load_checkpoint
from tests.conftest import needs_fashion

pytestmark = [pytest.mark.smoke, needs_fashion]

SMALL = [
    "manifest.max_per_class=100", "manifest.test=test:30", "pretrain.epochs=1",
    "pretrain.max_steps_per_epoch=4", "pretrain.batch_size=64", "pretrain.workers=0",
    "pretrain.knn.bank_per_class=10", "pretrain.knn.queries=100", "finetune.workers=0",
    "finetune.epochs=5", "finetune.batch_size=32", "finetune.crt_epochs=3",
]


def test_proj_head_with_crt_from_a_pretraining_checkpoint(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.shards={tmp_path / 'shards'}", f"tracking.uri={uri}", *SMALL]
    assert main(["pretrain", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'pre'}",
                 *common]) == 0
    encoder = tmp_path / "pre" / "pretrain" / "encoder.pt"
    saved = load_checkpoint(encoder)
    assert saved["projector"]["dims"] == [64, 512, 512]  # cifar_resnet8 → proj_dim 512 (×2)

    out = tmp_path / "ft"
    assert main(["finetune", "recipes/quickstart.yaml", "--from", str(encoder),
                 f"output_dir={out}", "finetune.mode=proj_head", "finetune.classifier_stage=crt",
                 *common]) == 0
    head = out / "finetune" / "head.pt"
    assert head.exists()
    assert "(proj_head + crt)" in capsys.readouterr().out
    meta = load_checkpoint(head)
    assert meta["mode"] == "proj_head" and meta["classifier_stage"] == "crt"
    assert meta["spec"]["projector"]["dims"] == [64, 512]

    assert main(["eval", "recipes/quickstart.yaml", "--from", str(head), f"output_dir={out}",
                 "eval.embedding_plot=true", *common]) == 0
    report = json.loads((out / "eval_report" / "report.json").read_text())
    for png in ("reliability.png", "embedding.png"):
        assert (out / "eval_report" / png).read_bytes()[:4] == b"\x89PNG"
    (top1,) = [m["top1"] for m in report["results"].values()]

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    (ft_run,) = [r for r in runs if r.data.tags.get("ltscale.stage") == "finetune"]
    assert ft_run.data.tags["ltscale.finetune_mode"] == "proj_head"
    assert ft_run.data.tags["ltscale.head"] == str(head.resolve())
    assert "crt/loss" in ft_run.data.metrics and "head/loss" in ft_run.data.metrics
    assert ft_run.data.params["finetune.mode"] == "proj_head"
    assert top1 == pytest.approx(ft_run.data.metrics["test/top1"], abs=1e-6)
    (m,) = report["results"].values()
    for key in ("ece", "ece_many", "ece_medium", "ece_few"):  # no Many class at 100 per class
        assert ft_run.data.metrics.get(f"test/{key}") == pytest.approx(m[key], abs=1e-6) \
            if m[key] is not None else f"test/{key}" not in ft_run.data.metrics
    (ev_run,) = [r for r in runs if r.data.tags.get("ltscale.stage") == "eval"]
    logged = {a.path for a in client.list_artifacts(ev_run.info.run_id, "report")}
    assert {"report/reliability.png", "report/embedding.png"} <= logged
    assert top1 > 0.2  # 10 classes; a few SimSiam steps and a short head training beat chance
