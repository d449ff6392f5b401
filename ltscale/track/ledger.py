"""Which MLflow run each named run of a job is, kept across requeues.

A requeued job runs its command again from the start (its training resumes from the newest
checkpoint). The tracker opens its runs in the same order again; with a ledger it finds the run
id each one had in the previous attempt and continues that run instead of starting a new one.
Runs are keyed by their path of names and how often that path was opened before in the process
(``quickstart#0/seed=1#0/pretrain#0``), so two runs with the same name stay apart.

``ltscale submit`` gives every job its own ledger file through ``$LTSCALE_MLFLOW_LEDGER``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ltscale.core.atomic import write_json_atomic

LEDGER_ENV = "LTSCALE_MLFLOW_LEDGER"


class RunLedger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.runs: dict[str, str] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.runs = {}
        except ValueError as exc:
            raise ValueError(f"MLflow run ledger {self.path} is not valid JSON ({exc}); remove "
                             "it to start new runs") from None

    @classmethod
    def from_env(cls) -> "RunLedger | None":
        path = os.environ.get(LEDGER_ENV)
        return cls(path) if path else None

    def get(self, key: str) -> str | None:
        return self.runs.get(key)

    def put(self, key: str, run_id: str) -> None:
        self.runs[key] = run_id
        write_json_atomic(self.path, self.runs)
