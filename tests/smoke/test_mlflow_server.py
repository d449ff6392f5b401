"""`ltscale run` tracking to a real `mlflow server` on localhost (not the SQLite file): parent and
child runs with params, provenance tags, lineage, metrics and artifacts uploaded through the
server; `ltscale compare` reads them back; a server that is down stops `ltscale submit` before
anything is queued."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import make_idx
from tests.slurm.cluster import write_recipe

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
         "--artifacts-destination", str(tmp / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"uri": uri, "tmp": tmp}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_pipeline_tracks_to_a_server_and_compare_reads_it(server, tmp_path):
    idx = make_idx(tmp_path / "idx", train=60, test=12)
    recipe = write_recipe(tmp_path / "r.yaml", idx, tmp_path / "out", epochs=1, uri="",
                          experiment="served")
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    raw["tracking"] = {"experiment": "served"}  # the server comes from MLFLOW_TRACKING_URI
    raw["finetune"] = {"mode": "linear", "epochs": 2, "batch_size": 8, "workers": 0}
    raw["baselines"] = {"random_encoder": False, "ce_scratch": {"enabled": False}}
    recipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": server["uri"]}
    proc = subprocess.run([sys.executable, "-m", "ltscale", "run", str(recipe)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    client = mlflow.MlflowClient(server["uri"])
    exp = client.get_experiment_by_name("served")
    runs = {r.data.tags["ltscale.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert {"pipeline", "data", "pretrain", "finetune", "eval"} <= set(runs)
    parent = runs["pipeline"].info.run_id
    for stage in ("data", "pretrain", "finetune", "eval"):
        r = runs[stage]
        assert r.info.status == "FINISHED" and r.data.tags["ltscale.parent_run"] == parent
        assert r.data.params["pretrain.epochs"] == "1"
        assert r.data.tags["ltscale.git_commit"] and r.data.tags["ltscale.manifest_hash"]
    assert runs["eval"].data.tags["ltscale.source_run"] == runs["finetune"].info.run_id
    assert client.get_metric_history(runs["pretrain"].info.run_id, "epoch/loss")
    # artifacts went through the server into its artifact store
    files = {a.path for a in client.list_artifacts(parent)}
    assert "recipe.yaml" in files
    assert list((server["tmp"] / "artifacts").rglob("recipe.yaml"))

    cmp = subprocess.run([sys.executable, "-m", "ltscale", "compare", "served", "--group-by",
                          "finetune.mode", "--metric", "top1", "--format", "csv"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    header, row = cmp.stdout.strip().splitlines()
    assert header == "finetune.mode,runs,top1_mean,top1_std"
    top1 = runs["eval"].data.metrics["test/top1"]
    assert row.split(",")[:3] == ["linear", "1", repr(top1)]


def test_submit_refuses_a_server_that_is_down(tmp_path):
    port = _free_port()
    idx = make_idx(tmp_path / "idx", train=30, test=6)
    recipe = write_recipe(tmp_path / "r.yaml", idx, tmp_path / "out", epochs=1,
                          uri=f"http://127.0.0.1:{port}")
    proc = subprocess.run([sys.executable, "-m", "ltscale", "submit", str(recipe), "--cluster",
                           "local", "--folder", str(tmp_path / "sub")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "is unreachable" in proc.stderr
    assert not (tmp_path / "sub").exists()
