"""Read-only use of a tracking store: a command that only reads runs (``compare``, ``--from
RUN_ID``) never creates one. MLflow creates an empty SQLite database at any ``sqlite:///`` path
it is given; a missing file is refused here first, naming the URI and the file."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from ltscale.core.errors import LaunchError, LtscaleError

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


SQLITE_HEADER = b"SQLite format 3\x00"


def check_readable(uri: str, why: str = "nothing to read") -> None:
    """Before a command reads runs: an ``http(s)`` server must answer within seconds (MLflow
    itself retries for minutes), and a SQLite store must exist and be an SQLite database that
    opens; each failure is one ``NoStore`` line naming the URI and the file or the cause."""
    if uri.startswith(("http://", "https://")):
        check_tracking(uri, timeout_s=5.0)
        return
    require_store(uri, why)
    db = sqlite_file(uri)
    if db is None:
        return
    if db.is_dir():
        raise NoStore(f"tracking store {uri}: {db} is a folder, not an SQLite database file")
    with open(db, "rb") as fh:
        head = fh.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        raise NoStore(f"tracking store {uri}: {db} is not an SQLite database (it does not "
                      "start with 'SQLite format 3'); pass --tracking-uri or set "
                      "MLFLOW_TRACKING_URI to the mlflow.db holding the runs")
    import sqlite3

    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise NoStore(f"tracking store {uri}: {db} cannot be read as an SQLite database "
                      f"({exc}); it may be damaged or cut short") from None


def unreadable(uri: str, exc: BaseException) -> NoStore:
    """One line for an error of MLflow or its database layer while reading ``uri``."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    where = f" ({sqlite_file(uri)})" if sqlite_file(uri) is not None else ""
    return NoStore(f"tracking store {uri}{where} cannot be read ({type(exc).__name__}: "
                   f"{first[:300]})")


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """An ``http(s)://`` tracking server must answer ``/health``; file and database stores are
    created on first use and need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise LaunchError(f"MLflow tracking server {uri} answered {resp.status} on "
                                  "/health")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LaunchError(f"MLflow tracking server {uri} is unreachable ({reason}); start it, "
                          "fix MLFLOW_TRACKING_URI / tracking.uri, or unset them to track in "
                          "the local SQLite file mlflow.db") from None
