"""Many synthetic eval runs in an MLflow SQLite store, cheaply, for timing `ltscale compare`.

One run is logged through MLflow (so the store's schema and the run's shape are MLflow's own:
the eval stage's tags, a few recipe params, the scalar ``test/*`` metrics and one
``test/class_<c>`` per class); the others are copies of its rows made with plain SQL, each with
its own run id, method, seed and metric values. Logging 300 × 8,142 metrics through the client
would take far longer than the comparison being measured.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import numpy as np

EXPERIMENT = "bench-scale"
METHODS = ("simsiam", "simclr", "byol", "sbcl", "supcon")
SCALARS = ("top1", "top5", "balanced_acc", "mean_per_class", "many", "medium", "few",
           "frequent", "medium_third", "rare")


def _template(uri: str, classes: int) -> str:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT)
    run = client.create_run(exp, tags={"ltscale.stage": "eval", "ltscale.model": "simsiam + ce"})
    rid = run.info.run_id
    metrics = [f"test/{k}" for k in SCALARS] + [f"test/class_{c}" for c in range(classes)]
    batch = [Metric(m, 0.5, 0, 0) for m in metrics]
    for i in range(0, len(batch), 1000):
        client.log_batch(rid, metrics=batch[i:i + 1000])
    client.log_batch(rid, params=[Param("method", "simsiam"), Param("seed", "0"),
                                  Param("data.image_size", "32")],
                     tags=[RunTag("ltscale.recipe", "bench-scale")])
    client.set_terminated(rid)
    return rid


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def fake_eval_runs(root: Path, runs: int, classes: int, seed: int = 0) -> tuple[str, int]:
    """``runs`` finished eval runs under ``root``/mlflow.db; returns (tracking URI, runs)."""
    uri = f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    rid = _template(uri, classes)
    rng = np.random.default_rng(seed)
    db = sqlite3.connect(Path(root) / "mlflow.db")
    with db:
        for i in range(1, runs):
            new = uuid.uuid4().hex
            for table in ("runs", "tags", "params", "metrics", "latest_metrics"):
                cols = _columns(db, table)
                sel = ["?" if c == "run_uuid" else
                       ("? || ''" if c == "name" and table == "runs" else c) for c in cols]
                args = [new if c == "run_uuid" else f"run-{i}" for c in cols
                        if c == "run_uuid" or (c == "name" and table == "runs")]
                db.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(sel)} "
                           f"FROM {table} WHERE run_uuid = ?", (*args, rid))
            db.execute("UPDATE params SET value = ? WHERE run_uuid = ? AND key = 'method'",
                       (METHODS[i % len(METHODS)], new))
            db.execute("UPDATE params SET value = ? WHERE run_uuid = ? AND key = 'seed'",
                       (str(i // len(METHODS)), new))
            for table in ("metrics", "latest_metrics"):
                db.execute(f"UPDATE {table} SET value = ? * (0.5 + random() % 1000 / 2000.0) "
                           f"WHERE run_uuid = ?", (float(rng.uniform(0.8, 1.2)), new))
    db.close()
    return uri, runs
