"""Tracking behind a small interface. Rank 0 uses ``MlflowTracker``; other ranks and unit tests
get ``NullTracker``. mlflow is imported only here, and only when a run starts."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

from ltscale.track.ledger import RunLedger


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

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_dataset(self, name: str, digest: str, source: str) -> None: ...

    def use_folder(self, folder: str | Path) -> None: ...


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

    def log_text(self, text, artifact_file):
        pass

    def log_dataset(self, name, digest, source):
        pass

    def use_folder(self, folder):
        pass


# The experiment tag MLflow's UI reads to choose an experiment's first page: without it, MLflow 3
# opens a new experiment on its GenAI "Overview"; this kind opens the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Tags that describe a stage's training data (``Context.tags``): a run given all of them, at its
# start or later, also gets that manifest as an MLflow dataset input (the runs table's Dataset
# column), wherever the stage's run was started.
DATASET_TAGS = ("ltscale.dataset", "ltscale.manifest_hash", "ltscale.shards")


def _transient(exc: BaseException) -> bool:
    """A SQLite lock or a get-or-create race between processes sharing one store."""
    text = str(exc).lower()
    return any(s in text for s in ("database is locked", "already exists", "unique constraint",
                                   "database table is locked"))


def _retry(fn, *args, attempts: int = 20, **kwargs):
    """``fn`` retried with backoff while another process holds the SQLite store (several ranks'
    jobs, sweep points or processes may log to one ``mlflow.db``)."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException or SQLAlchemy errors
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` beside a SQLite store while it is opened: MLflow
    creates and migrates the tables on first use, and two processes doing that at once leave
    a half-migrated database."""
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0]) if uri.startswith("sqlite:///") else None
    if db is None or db.name in ("", ":memory:"):
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class MlflowTracker:
    """MLflow runs of one process (rank 0). Nested runs carry ``ltscale.parent_run``; a run that
    ends with an exception is marked FAILED with the error in ``ltscale.error`` (KILLED when the
    process is told to exit, e.g. preempted). With a ledger (``$LTSCALE_MLFLOW_LEDGER``, set by
    ``ltscale submit``) a requeued job continues its previous runs and skips every metric step
    they already hold, so no step is logged twice. The experiment is tagged to open on the runs
    table (``EXPERIMENT_KIND``); a run given a stage's ``DATASET_TAGS`` gets its manifest as
    dataset input; ``use_folder`` records the open runs in the output folder
    (``track.open_runs``)."""

    def __init__(self, uri: str | None = None, experiment: str = "ltscale",
                 ledger: RunLedger | None = None):
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self._mlflow = mlflow
        self.uri = uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        with _store_lock(self.uri):  # the first process creates the tables, the others wait
            exp = _retry(mlflow.set_experiment, experiment)
        if EXPERIMENT_KIND[0] not in (exp.tags or {}):  # a kind chosen in the UI is kept
            _retry(mlflow.MlflowClient(self.uri).set_experiment_tag, exp.experiment_id,
                   *EXPERIMENT_KIND)
        self.experiment = experiment
        self._record = None  # track.open_runs.OpenRuns of the output folder (use_folder)
        self._open: list[str] = []
        self.ledger = ledger if ledger is not None else RunLedger.from_env()
        self._path: list[str] = []
        self._opened: dict[str, int] = {}
        self._done_steps: dict[str, dict[str, int]] = {}  # resumed run → metric → last step

    @property
    def run_id(self) -> str | None:
        run = self._mlflow.active_run()
        return run.info.run_id if run else None

    def _key(self, name: str) -> str:
        path = "/".join(self._path + [name])
        n = self._opened.get(path, 0)
        self._opened[path] = n + 1
        return "/".join(self._path + [f"{name}#{n}"])

    def _start(self, name: str, nested: bool, tags: dict):
        mlflow = self._mlflow
        key = self._key(name)
        known = self.ledger.get(key) if self.ledger is not None else None
        if known is not None:
            run = _retry(mlflow.start_run, run_id=known, nested=nested)
            client = mlflow.MlflowClient(self.uri)
            self._done_steps[known] = {
                k: max(m.step for m in _retry(client.get_metric_history, known, k))
                for k in _retry(client.get_run, known).data.metrics}
            if tags:
                _retry(mlflow.set_tags, tags)
        else:
            run = _retry(mlflow.start_run, run_name=name, nested=nested, tags=tags)
            if self.ledger is not None:
                self.ledger.put(key, run.info.run_id)
        return key, run

    @contextlib.contextmanager
    def run(self, name: str, *, nested: bool = False, tags: dict | None = None):
        parent = self.run_id if nested else None
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent:
            tags["ltscale.parent_run"] = parent
        key, run = self._start(name, nested, tags)
        self._path.append(key.rsplit("/", 1)[-1])
        self._note_open(run.info.run_id, True)
        try:
            self._dataset_from(tags)
            yield run
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                status = "KILLED"
            else:
                status = "FAILED"
                _retry(self._mlflow.set_tag, "ltscale.error",
                       f"{type(exc).__name__}: {exc}"[:5000])
            _retry(self._mlflow.end_run, status)
            self._note_open(run.info.run_id, False)
            raise
        else:
            _retry(self._mlflow.end_run, "FINISHED")
            self._note_open(run.info.run_id, False)
        finally:
            self._path.pop()

    def use_folder(self, folder: str | Path) -> None:
        """Record the runs this process opens in ``folder`` (``track.open_runs``; call it
        holding the folder's lock), after marking KILLED those a killed process left RUNNING."""
        from ltscale.track.open_runs import OpenRuns

        self._record = OpenRuns(folder, self.uri)
        self._record.close_left_open(self._mlflow.MlflowClient(self.uri), _retry)

    def _note_open(self, run_id: str, opened: bool) -> None:
        if opened:
            self._open.append(run_id)
        elif run_id in self._open:
            self._open.remove(run_id)
        if self._record is not None:
            self._record.write(self._open)

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The active run's training data as an MLflow dataset input: ``name``, ``digest`` (the
        manifest hash) and ``source`` (the shards folder)."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path
            warnings.simplefilter("ignore")
            dataset = MetaDataset(resolve_dataset_source(str(source)), name=name, digest=digest)
        _retry(self._mlflow.log_input, dataset, context="training")

    def _dataset_from(self, tags: dict) -> None:
        if all(k in tags for k in DATASET_TAGS):
            self.log_dataset(*(str(tags[k]) for k in DATASET_TAGS))

    def log_params(self, params: dict[str, Any]) -> None:
        items = [(k, "null" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):
            _retry(self._mlflow.log_params, dict(items[i:i + 90]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()
                 if v is not None and v == v}
        done = self._done_steps.get(self.run_id or "")
        if done:  # a continued run: steps its previous attempt logged are not logged again
            clean = {k: v for k, v in clean.items() if (step or 0) > done.get(k, -1)}
        if clean:
            _retry(self._mlflow.log_metrics, clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _retry(self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})
        self._dataset_from(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(self._mlflow.log_artifact, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(self._mlflow.log_text, text, artifact_file)
