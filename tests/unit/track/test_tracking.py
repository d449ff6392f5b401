"""MLflow tracking: what `ltscale run` records per stage (params, tags, lineage, artifacts,
metrics, checkpoints by reference), FAILED runs with their error, and runs continued after a
requeue without a step logged twice."""

from collections import Counter
from pathlib import Path

import mlflow
import pytest

from ltscale import __version__
from ltscale.config.loading import recipe_from_dict
from ltscale.pipeline import run_pipeline
from ltscale.stages.context import git_commit
from ltscale.track import MlflowTracker
from ltscale.track.ledger import RunLedger
from tests.conftest import tiny_pipeline_recipe


def _recipe(tiny_idx, tmp_path, **extra):
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    return recipe_from_dict(raw | {"name": "tracked", "tracking": {"experiment": "tracked"}}
                            | extra)


def _runs(uri, experiment="tracked"):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.data.tags["ltscale.stage"]: r for r in client.search_runs([exp.experiment_id])}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); tests keep apart
    by experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory, store):

    from tests.conftest import make_idx  # the tiny_idx data, built once for the module

    tmp = tmp_path_factory.mktemp("tracked")
    root = make_idx(tmp / "idx")
    uri = store
    recipe = _recipe(root, tmp)
    summary = run_pipeline(recipe, MlflowTracker(uri, "tracked"), progress=False)
    return {"uri": uri, "summary": summary, "recipe": recipe, "runs": _runs(uri)}


def test_every_stage_records_recipe_params_and_provenance_tags(pipeline_runs):
    runs = pipeline_runs["runs"]
    assert {"pipeline", "data", "pretrain", "finetune", "eval"} <= set(runs)
    parent = runs["pipeline"]
    assert parent.info.run_id == pipeline_runs["summary"]["parent_run_id"]
    for stage in ("data", "pretrain", "finetune", "eval"):
        r = runs[stage]
        assert r.info.status == "FINISHED"
        tags, params = r.data.tags, r.data.params
        assert tags["ltscale.parent_run"] == parent.info.run_id
        assert tags["ltscale.version"] == __version__ and tags["ltscale.git_commit"] == git_commit()
        assert len(tags["ltscale.manifest_hash"]) >= 8 and len(tags["ltscale.index_hash"]) >= 8
        # the fully resolved recipe, flattened
        assert params["pretrain.epochs"] == "1" and params["finetune.loss.name"] == "la_sl"
        assert params["manifest.noise"] == "sym:0.4" and params["seed"] == "0"
    assert parent.data.params["data.image_size"] == "8"


def test_lineage_links_each_stage_to_the_run_it_started_from(pipeline_runs):
    runs = pipeline_runs["runs"]
    assert runs["finetune"].data.tags["ltscale.source_run"] == runs["pretrain"].info.run_id
    assert runs["eval"].data.tags["ltscale.source_run"] == runs["finetune"].info.run_id
    assert "ltscale.source_run" not in runs["pretrain"].data.tags


def test_artifacts_and_checkpoints_by_reference(pipeline_runs):
    client = mlflow.MlflowClient(pipeline_runs["uri"])
    runs = pipeline_runs["runs"]
    parent_files = {a.path for a in client.list_artifacts(runs["pipeline"].info.run_id)}
    assert "recipe.yaml" in parent_files and "report" in parent_files
    recipe_yaml = mlflow.artifacts.load_text(
        f"{runs['pipeline'].info.artifact_uri}/recipe.yaml")
    assert "epochs: 1" in recipe_yaml and "name: tracked" in recipe_yaml
    header = mlflow.artifacts.load_dict(
        f"{runs['data'].info.artifact_uri}/manifest_header.json")
    assert header["index_hash"] == runs["data"].data.tags["ltscale.index_hash"]
    tags = runs["pretrain"].data.tags
    assert Path(tags["ltscale.checkpoint"]).is_file() and Path(tags["ltscale.encoder"]).is_file()
    pretrain_files = [a.path for a in client.list_artifacts(runs["pretrain"].info.run_id)]
    assert not [p for p in pretrain_files if p.endswith(".pt")]  # referenced, not copied


def test_per_step_epoch_and_system_metrics(pipeline_runs):
    client = mlflow.MlflowClient(pipeline_runs["uri"])
    pre = pipeline_runs["runs"]["pretrain"]
    for key in ("epoch/loss", "epoch/images_per_s", "epoch/peak_memory_mb", "knn/top1"):
        assert key in pre.data.metrics, key
    assert pre.data.metrics["epoch/images_per_s"] > 0
    assert client.get_metric_history(pre.info.run_id, "epoch/loss")[0].step > 0
    ev = pipeline_runs["runs"]["eval"].data.metrics
    assert {"test/top1", "test/few"} <= set(ev)  # no Many-shot class in 60 images


def test_a_failing_stage_ends_failed_with_its_error(tiny_idx, tmp_path, monkeypatch, store):
    import ltscale.pipeline as pipeline

    def broken(ctx):
        raise RuntimeError("pretraining blew up at step 3")

    monkeypatch.setattr(pipeline, "run_pretrain", broken)
    with pytest.raises(RuntimeError, match="blew up"):
        run_pipeline(_recipe(tiny_idx, tmp_path), MlflowTracker(store, "failing"),
                     progress=False)
    runs = _runs(store, "failing")
    assert runs["data"].info.status == "FINISHED"
    for stage in ("pretrain", "pipeline"):
        assert runs[stage].info.status == "FAILED"
        assert runs[stage].data.tags["ltscale.error"] == \
            "RuntimeError: pretraining blew up at step 3"


def test_an_exit_marks_the_run_killed(store):
    uri = store
    tracker = MlflowTracker(uri, "killed")
    with pytest.raises(SystemExit):
        with tracker.run("job", tags={"ltscale.stage": "pretrain"}):
            raise SystemExit(-1)  # what submitit does after requeueing a preempted job
    (run,) = _runs(uri, "killed").values()
    assert run.info.status == "KILLED" and "ltscale.error" not in run.data.tags


def test_a_requeued_job_continues_its_runs_without_repeating_steps(tmp_path, store):
    uri = store
    ledger = tmp_path / "job.mlflow-runs.json"

    def attempt(last_step: int, interrupt: bool):
        tracker = MlflowTracker(uri, "requeued", ledger=RunLedger(ledger))
        with tracker.run("p", tags={"ltscale.stage": "pipeline"}):
            with tracker.run("pretrain", nested=True, tags={"ltscale.stage": "pretrain"}):
                # a resumed loop starts again after its newest checkpoint (step 4), which is
                # before the last step the previous attempt logged
                for step in range(1, last_step + 1):
                    tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
                tracker.log_metrics({"pretrain/seconds": 1.0 + interrupt})
                if interrupt:
                    raise SystemExit(-1)
            with tracker.run("pretrain", nested=True, tags={"ltscale.stage": "second"}):
                tracker.log_metrics({"x": 1.0}, step=1)
        return tracker

    with pytest.raises(SystemExit):
        attempt(6, interrupt=True)
    first = RunLedger(ledger).runs
    assert sorted(first) == ["p#0", "p#0/pretrain#0"]
    attempt(10, interrupt=False)
    second = RunLedger(ledger).runs
    assert {k: second[k] for k in first} == first            # the same runs, continued
    assert "p#0/pretrain#1" in second                        # a same-named sibling stays apart
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("requeued").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(first["p#0/pretrain#0"], "train/loss")
    steps = Counter(m.step for m in history)
    assert sorted(steps) == list(range(1, 11)) and set(steps.values()) == {1}
    # a metric logged without a step is not logged again either
    assert len(client.get_metric_history(first["p#0/pretrain#0"], "pretrain/seconds")) == 1
