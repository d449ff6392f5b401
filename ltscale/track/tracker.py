"""Tracking behind a small interface. Rank 0 uses ``MlflowTracker``; other ranks and unit tests
get ``NullTracker``. mlflow is imported only here, and only when a run starts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Protocol


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker(Protocol):
    run_id: str | None

    def run(self, name: str, *, nested: bool = False, tags: dict | None = None): ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    run_id = None

    @contextlib.contextmanager
    def run(self, name: str, *, nested: bool = False, tags: dict | None = None) -> Iterator[None]:
        yield None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def set_tags(self, tags):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass


class MlflowTracker:
    def __init__(self, uri: str | None = None, experiment: str = "ltscale"):
        import logging

        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self._mlflow = mlflow
        self.uri = uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment)
        self.experiment = experiment

    @property
    def run_id(self) -> str | None:
        run = self._mlflow.active_run()
        return run.info.run_id if run else None

    @contextlib.contextmanager
    def run(self, name: str, *, nested: bool = False, tags: dict | None = None):
        with self._mlflow.start_run(run_name=name, nested=nested, tags=tags or {}) as r:
            yield r

    def log_params(self, params: dict[str, Any]) -> None:
        items = [(k, "null" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self._mlflow.log_params(dict(items[i:i + 90]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()
                 if v is not None and v == v}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)
