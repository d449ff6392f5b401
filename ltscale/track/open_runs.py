"""The MLflow runs a process has open, recorded in its output folder.

A process killed without a chance to close its runs (``kill -9``, the out-of-memory killer, a
lost node) leaves them RUNNING in the store for ever. The tracker records the ids of the runs it
has open in ``OUTPUT_DIR/.ltscale-mlflow-runs.json`` (per tracking URI) while it holds the
folder's lock; the next process to use the folder marks those still RUNNING as KILLED, with the
reason in ``ltscale.error``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ltscale.core.atomic import write_json_atomic

logger = logging.getLogger(__name__)

RUN_RECORD = ".ltscale-mlflow-runs.json"
LEFT_OPEN = ("the process ended without closing this run (killed: kill -9, out of memory or a "
             "lost node); marked KILLED when its output folder was next used")


class OpenRuns:
    """The record of one output folder, for the store at ``uri``."""

    def __init__(self, folder: str | Path, uri: str):
        self.folder, self.uri = Path(folder), uri
        self.path = self.folder / RUN_RECORD

    def _read(self) -> dict:
        try:
            recorded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def close_left_open(self, client, retry) -> list[str]:
        """Mark KILLED the recorded runs that are still RUNNING (their process is gone: the
        caller holds the folder's lock); return their ids. ``retry(fn, *args)`` calls the
        store."""
        recorded = self._read()
        closed = []
        for run_id in map(str, recorded.get(self.uri) or []):
            try:
                if retry(client.get_run, run_id).info.status != "RUNNING":
                    continue
                retry(client.set_tag, run_id, "ltscale.error", LEFT_OPEN)
                retry(client.set_terminated, run_id, "KILLED")
            except Exception as exc:  # noqa: BLE001 - a deleted run, an MLflow error
                logger.warning(f"MLflow run {run_id} recorded in {self.path} was not checked "
                               f"({type(exc).__name__}: {str(exc)[:200]})")
                continue
            closed.append(run_id)
            logger.warning(f"MLflow run {run_id}: left RUNNING by a killed process in "
                           f"{self.folder}; marked KILLED")
        if self.uri in recorded:
            self.write([])
        return closed

    def write(self, run_ids: list[str]) -> None:
        """Record ``run_ids`` as this process's open runs (a failed write is only logged: the
        run's own outcome matters more, e.g. when the disk is full)."""
        recorded = self._read()
        recorded[self.uri] = list(run_ids)
        try:
            write_json_atomic(self.path, recorded)
        except OSError as exc:
            logger.warning(f"{self.path}: the open MLflow runs were not recorded ({exc})")
