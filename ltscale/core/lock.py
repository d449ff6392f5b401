"""One ltscale process per output folder.

Two runs writing one ``output_dir`` would resume from each other's checkpoints and overwrite each
other's heads and reports. ``output_lock`` takes an exclusive, non-blocking ``flock`` on
``<output_dir>/.ltscale.lock`` (rank 0 of a launched job takes it for the whole job) and writes
the holder's pid and host into it; a second run is refused naming them. The kernel drops the
lock when the process ends, however it ends, so a killed run never leaves a stale lock behind.

The lock file is opened without following a symbolic link (``O_NOFOLLOW``) and created without
truncating (``O_CREAT``, no ``O_TRUNC``); a lock path that is a symbolic link, not a regular
file, a file with other hard links, or a file holding something other than an ltscale holder
line is refused, naming it, before anything is written: the lock never empties a file of yours.

``build_lock`` is the same lock for a dataset build (``ltscale data build --out DIR``): the file
is ``.<name>.lock`` beside ``DIR`` (next to the build's work folder ``.<name>.building``; inside
``DIR`` it would be a file the dataset does not list, and ``DIR`` is only created at the end),
and it is removed when the build ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from pathlib import Path
from typing import Iterator

from ltscale.core.errors import LtscaleError

LOCK_FILE = ".ltscale.lock"


class OutputLocked(LtscaleError):
    """Another ltscale process is writing this output folder."""


class LockRefused(LtscaleError):
    """The lock path is not a lock file ltscale may create or empty."""


# what ltscale writes into its lock file: nothing, or its holder's pid and host
_HOLDER = re.compile(rb"(pid \d+ on \S{1,400})?")


def _check_lock_path(path: Path, what: str, st: os.stat_result | None = None,
                     folder: Path | None = None) -> None:
    """Refuse a lock path that is a symbolic link, not a regular file or has other hard links
    (emptying it would empty another name's file too); ``st``: the opened file's status;
    ``folder``: what the lock guards (default: the folder holding it)."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
    why = ("is a symbolic link" if stat.S_ISLNK(st.st_mode)
           else "is not a regular file" if not stat.S_ISREG(st.st_mode)
           else "has other hard links" if st.st_nlink > 1 else None)
    if why:
        raise LockRefused(f"{what} {folder or path.parent}: {path} {why}; remove it (ltscale "
                          "creates its own lock file there)")


def _open_lock(path: Path, what: str, folder: Path) -> int:
    """Open (create) the lock file without following a link; refuse one that is no lock file."""
    _check_lock_path(path, what, folder=folder)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a symbolic link since the check
            raise LockRefused(f"{what} {folder}: {path} is a symbolic link; remove it (ltscale "
                              "creates its own lock file there)") from None
        raise
    try:
        _check_lock_path(path, what, os.fstat(fd), folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _claim(fd: int, path: Path, what: str, folder: Path) -> None:
    """Refuse a lock file holding anything but an ltscale holder line; write ours into it."""
    if not _HOLDER.fullmatch(os.pread(fd, 513, 0)):
        raise LockRefused(f"{what} {folder}: {path} holds something other than an ltscale "
                          "lock; move it away (ltscale creates its own lock file there)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)


def _holder(fd: int) -> str:
    return os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike, what: str = "output_dir") -> Iterator[None]:
    import fcntl

    from ltscale.core.dist_env import DistEnv

    if DistEnv.from_env().rank != 0:  # the job's rank 0 holds the lock for all its ranks
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _open_lock(path, what, folder)
    try:
        _flock_or_refuse(fd, f"{what} {folder} is in use by another ltscale run", what)
        _claim(fd, path, what, folder)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock_or_refuse(fd: int, busy: str, what: str) -> None:
    """Take the exclusive lock on ``fd`` or refuse: ``busy``, the holder, what to do."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputLocked(f"{busy} ({_holder(fd)}); wait for it to end or choose another "
                           f"{what}") from None


def build_lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def build_lock(out: str | os.PathLike, what: str = "--out") -> Iterator[None]:
    """One dataset build per output folder ``out`` (whose parent exists): a second build is
    refused naming ``out`` and the first build's pid and host. The lock file is removed (while
    still held) when the build ends; a build that opened it just before checks, once it holds
    the lock, that the path still names the file it locked, and otherwise starts over."""

    out = Path(out)
    path = build_lock_path(out)
    for _ in range(5):
        fd = _open_lock(path, what, out)
        try:
            _flock_or_refuse(fd, f"{what} {out} is being written by another ltscale build",
                             what)
            st = os.fstat(fd)
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                continue  # the previous holder removed it after we opened it: take a new one
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue
            _claim(fd, path, what, out)
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
            return
        finally:
            os.close(fd)  # closing drops the flock
    raise OutputLocked(f"{what} {out}: could not take the build lock {path} (it keeps being "
                       "replaced by other builds); try again")
