"""Files ltscale writes into folders that are not its own (``compare --out`` and ``--plots``,
``export --out``): it replaces only a file it wrote.

The mark is a list beside the files: ``.ltscale-written.json`` in the file's folder records, by
name, the SHA-256 of each file ltscale wrote there (``{"written_by": "ltscale", "files": {name:
[sha256]}}``). An existing file is replaced only when it is listed with its current content; any
other — a user's file, the MLflow database, a recipe, a symbolic link, a table of ours edited
since — is refused, naming it, unless ``force``. A folder is never replaced. The new file is
written atomically (``atomic_path``); its hash is listed as pending before it is put in place and
alone after, so a crash in between leaves a file still known as ltscale's.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Iterator

from ltscale.core.atomic import atomic_path, write_json_atomic
from ltscale.core.errors import LtscaleError
from ltscale.core.hashing import file_sha256

MARK_FILE = ".ltscale-written.json"
WRITTEN_BY = "ltscale"


class NotOurs(LtscaleError):
    """An output would replace a file ltscale did not write."""


def written(folder: str | os.PathLike) -> dict[str, list[str]]:
    """name → SHA-256s of the files ltscale wrote in ``folder`` ({} without a list); a list
    that is not ltscale's is refused, naming it."""
    mark = Path(folder) / MARK_FILE
    try:
        st = os.lstat(mark)
    except FileNotFoundError:
        return {}
    files = None
    if stat.S_ISREG(st.st_mode):
        try:
            data = json.loads(mark.read_text(encoding="utf-8"))
            files = data["files"] if data["written_by"] == WRITTEN_BY else None
        except (OSError, ValueError, KeyError, TypeError):
            files = None
    if not (isinstance(files, dict) and all(isinstance(v, list) for v in files.values())):
        raise NotOurs(f"{mark} is not ltscale's list of the files it wrote; move it away "
                      "(nothing was changed)")
    return files


def check_replace(path: str | os.PathLike, option: str, force: bool = False) -> None:
    """Refuse ``path`` (the value of ``option``) when it exists and is not a file ltscale wrote
    there, unless ``force``; a folder, or the list itself, is refused always."""
    path = Path(path)
    listed = written(path.parent)
    if path.name == MARK_FILE:
        raise NotOurs(f"{option} {path} is ltscale's list of the files it wrote; name another "
                      "file (nothing was changed)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise NotOurs(f"{option} {path} is a folder; name a file (nothing was changed)")
    if force:
        return
    if stat.S_ISREG(st.st_mode) and path.name in listed \
            and file_sha256(path) in listed[path.name]:
        return
    what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file ltscale did not write"
    raise NotOurs(f"{option} {path} exists and is {what} (not listed with its content in "
                  f"{path.parent / MARK_FILE}); choose another name or pass --force to replace "
                  "it (nothing was changed)")


def _record(path: Path, digest: str, pending: bool) -> None:
    files = written(path.parent)
    old = [h for h in files.get(path.name, []) if h != digest] if pending else []
    files[path.name] = old + [digest]
    write_json_atomic(path.parent / MARK_FILE, {
        "written_by": WRITTEN_BY, "files": files,
        "note": "files ltscale wrote in this folder (name: SHA-256); it replaces no other file"})


@contextlib.contextmanager
def owned_path(path: str | os.PathLike, option: str, force: bool = False) -> Iterator[Path]:
    """``atomic_path`` for an output named by ``option``: refused over a file ltscale did not
    write (see the module doc); the file written is listed as ltscale's."""
    path = Path(path)
    check_replace(path, option, force)
    with atomic_path(path) as tmp:
        yield tmp
        digest = file_sha256(tmp)
        _record(path, digest, pending=True)
    _record(path, digest, pending=False)
