"""Resolve `--from RUN_ID|PATH` to an encoder or head file."""

from __future__ import annotations

from pathlib import Path

from ltscale.core.errors import CheckpointError


def resolve_artifact(ref: str, kind: str, tracking_uri: str | None = None) -> Path:
    """``kind`` is "encoder" or "head". A path to a file is used as is; a directory is searched
    for ``encoder.pt`` / ``head.pt``; anything else is taken as an MLflow run id whose
    ``ltscale.<kind>`` tag names the file."""
    name = f"{kind}.pt"
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / name).is_file():  # the folder of one stage
            return path / name
        hits = sorted(path.rglob(name))
        if not hits:
            raise CheckpointError(f"no {name} under {path}")
        if len(hits) > 1:
            shown = ", ".join(str(h) for h in hits[:6]) + (", …" if len(hits) > 6 else "")
            raise CheckpointError(f"--from {path}: {len(hits)} {name} files under it ({shown}); "
                                  "pass the file (or its stage folder) you mean")
        return hits[0]
    if "/" in ref or ref.endswith(".pt"):
        raise CheckpointError(f"{ref}: no such file or directory")
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from ltscale.track import default_tracking_uri
    from ltscale.track.store import check_readable, missing_store, unreadable

    uri = tracking_uri or default_tracking_uri()
    db = missing_store(uri)  # MLflow would create an empty database there: only read a store
    if db is not None:
        raise CheckpointError(f"--from {ref}: no such file or directory, nor a run id: the "
                              f"tracking store {uri} does not exist ({db}; nothing was created)")
    check_readable(uri, f"--from {ref}")  # a server that does not answer: one line in seconds
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(ref)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST",
                                                  "INVALID_PARAMETER_VALUE"):
            raise unreadable(uri, exc) from None
        raise CheckpointError(f"{ref!r} is neither a file nor a run id in the tracking store "
                              f"{uri}") from None
    except SQLAlchemyError as exc:
        raise unreadable(uri, exc) from None
    tag = run.data.tags.get(f"ltscale.{kind}")
    if not tag:
        raise CheckpointError(f"MLflow run {ref} has no ltscale.{kind} tag; pass the run of a "
                              f"{'pretrain' if kind == 'encoder' else 'finetune'} stage")
    return Path(tag)
