"""Read-only use of a tracking store: a command that only reads runs (``compare``, ``--from
RUN_ID``) never creates one. MLflow creates an empty SQLite database at any ``sqlite:///`` path
it is given; a missing file is refused here first, naming the URI and the file."""

from __future__ import annotations

from pathlib import Path

from ltscale.errors import LtscaleError

SQLITE = "sqlite:///"


class NoStore(LtscaleError):
    """A read-only command was pointed at a tracking store that does not exist."""


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (relative to the working directory, or
    absolute as ``sqlite:////abs``); None for other stores and in-memory SQLite."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def missing_store(uri: str) -> Path | None:
    """The database file of a SQLite ``uri`` when it does not exist, else None."""
    db = sqlite_file(uri)
    return db if db is not None and not db.exists() else None


def require_store(uri: str, why: str = "nothing to read") -> None:
    """Refuse a SQLite ``uri`` whose file does not exist, before MLflow would create it."""
    db = missing_store(uri)
    if db is not None:
        raise NoStore(f"tracking store {uri}: {db} does not exist ({why}); pass --tracking-uri "
                      "or set MLFLOW_TRACKING_URI to the store holding the runs (nothing was "
                      "created)")
