"""One ltscale process per output folder.

Two runs writing one ``output_dir`` would resume from each other's checkpoints and overwrite each
other's heads and reports. ``output_lock`` takes an exclusive, non-blocking ``flock`` on
``<output_dir>/.ltscale.lock`` (rank 0 of a launched job takes it for the whole job) and writes
the holder's pid and host into it; a second run is refused naming them. The kernel drops the
lock when the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from ltscale.errors import LtscaleError

LOCK_FILE = ".ltscale.lock"


class OutputLocked(LtscaleError):
    """Another ltscale process is writing this output folder."""


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike, what: str = "output_dir") -> Iterator[None]:
    import fcntl

    from ltscale.launch.env import DistEnv

    if DistEnv.from_env().rank != 0:  # the job's rank 0 holds the lock for all its ranks
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            raise OutputLocked(f"{what} {folder} is in use by another ltscale run ({holder}); "
                               f"wait for it to end or choose another {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
