"""Stopping on a signal at a step boundary, after a checkpoint (preemption, time limits).

A scheduler warns a job before it kills it (SLURM: ``--signal=USR2@90``). ``watch(sig)`` makes
that signal a request: while a training loop runs, the handler only sets a flag; the loop checks
it before each step, agrees on it across ranks (one rank may get the signal alone), writes a
checkpoint of that exact step on every rank and raises ``Preempted``. The requeued job resumes
from that checkpoint and loses no step. When no loop is running (a stage without one, e.g. head
training on cached features), the handler that was installed before ``watch`` runs at once
instead — for a submitit job, its requeue — since nothing would look at the flag.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()
_state = {"loops": 0, "previous": {}, "signum": None}


class Preempted(SystemExit):
    """The loop saved a checkpoint on request and stopped (exit status 143, as after SIGTERM)."""

    def __init__(self, message: str, checkpoint=None):
        super().__init__(143)
        self.message, self.checkpoint = message, checkpoint

    def __str__(self) -> str:
        return self.message


def _handler(signum, frame):
    _state["signum"] = signum
    if _state["loops"]:
        _requested.set()
        return
    previous = _state["previous"].get(signum)
    if callable(previous):
        previous(signum, frame)


def watch(*signals: int) -> None:
    """Turn ``signals`` into stop requests (main thread only); the handlers installed before are
    kept for ``fallback`` and for signals that arrive while no loop runs."""
    for sig in signals:
        previous = signal.signal(sig, _handler)
        if previous is not _handler:
            _state["previous"][sig] = previous


def requested() -> bool:
    return _requested.is_set()


def watching() -> bool:
    return bool(_state["previous"])


@contextlib.contextmanager
def loop_running():
    """Marks a training loop that checks ``requested()`` before each step."""
    _state["loops"] += 1
    try:
        yield
    finally:
        _state["loops"] -= 1


def fallback() -> None:
    """Run the handler ``watch`` replaced for the signal that arrived (submitit: checkpoint and
    requeue on rank 0), as if the signal came now."""
    signum = _state["signum"]
    previous = _state["previous"].get(signum) if signum is not None else None
    if callable(previous):
        previous(signum, None)


def reset() -> None:
    """Restore the handlers ``watch`` replaced and forget any request (tests, reuse)."""
    for sig, previous in _state["previous"].items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _state.update(previous={}, signum=None)
    _requested.clear()


def quiet_worker(worker_id: int | None = None, then=None) -> None:
    """A loader worker's ``worker_init_fn``. A signal to the whole process group (Ctrl-C,
    ``timeout``, SLURM's ``scancel``) reaches the workers too; the main process handles it
    (its runs end KILLED, exit 143/130), so a worker must not die of it with torch's "DataLoader
    worker … killed by signal" in the main process: it ignores SIGINT, and SIGTERM ends it at
    once with status 0, which the main process does not count as a failure. (Ignoring SIGTERM
    as well would leave a worker that multiprocessing's exit handler cannot terminate, and that
    exit would wait for it forever.) ``then``: a ``worker_init_fn`` set before, called after."""
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    if then is not None:
        then(worker_id)
