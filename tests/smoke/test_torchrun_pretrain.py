"""`torchrun --nproc-per-node 2 -m ltscale pretrain` on Fashion-MNIST: DDP on CPU (gloo), sync BN,
rank 0 alone writes checkpoints and tracks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_fashion

pytestmark = [pytest.mark.smoke, needs_fashion]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_pretrain(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "manifest.max_per_class=200", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=3",
        "pretrain.batch_size=16", "pretrain.workers=0", "pretrain.knn.bank_per_class=10",
        "pretrain.knn.queries=100", "engine.backend=ddp", "engine.sync_bn=true",
        "engine.timeout_s=120", "threads=1", f"output_dir={tmp_path / 'run'}",
        f"data.shards={tmp_path / 'shards'}", f"tracking.uri={uri}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "ltscale", "pretrain", str(REPO / "recipes" / "quickstart.yaml"), *overrides],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    encoder = tmp_path / "run" / "pretrain" / "encoder.pt"
    assert encoder.stat().st_size > 0
    assert list((tmp_path / "run" / "pretrain").glob("checkpoint-*.pt"))

    from ltscale.engine.checkpoint import load_checkpoint
    from ltscale.models.files import load_encoder

    saved = load_checkpoint(sorted((tmp_path / "run" / "pretrain").glob("checkpoint-*.pt"))[-1])
    assert saved["world_size"] == 2 and saved["step"] == 3
    # the sync-BN encoder loads into the plain network (same state-dict keys)
    load_encoder(encoder, "cifar_resnet8", 1)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id])]
    assert [r.data.tags.get("ltscale.stage") for r in runs] == ["pretrain"]  # rank 0 only
    assert runs[0].info.status == "FINISHED"
