"""Files of tensors: ``save_checkpoint`` writes a dict with ``torch.save`` atomically (a failed
write names the file and the operating system's cause, and the previous file stays);
``load_checkpoint`` reads one with ``weights_only=True`` (no pickled code runs) and turns any
failure into one line naming the file. Every ltscale file of weights goes through these two:
checkpoints (``engine/checkpoint.py``), encoder and head files (``models/files.py``).

torch is imported when a file is written or read, so importing this module stays light."""

from __future__ import annotations

from pathlib import Path

from ltscale.core.atomic import atomic_path
from ltscale.core.errors import CheckpointError


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (no space, quota, I/O error); nothing was replaced."""


class _File:
    """The file ``torch.save`` writes through, keeping what interrupted a write: torch reports a
    failed write only as "unexpected pos N vs M", whatever the cause — an operating-system error,
    or a stop signal's exception raised while the bytes were being written."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _interruption(exc: BaseException | None) -> BaseException | None:
    """A stop (``KeyboardInterrupt``, ``SystemExit`` and their kin: not an ``Exception``) in
    ``exc`` or the exceptions it was raised while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if not isinstance(exc, Exception):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``state`` to ``path`` atomically. A write that fails (the disk fills, a quota, an I/O
    error) raises ``CheckpointWriteError`` naming ``path`` and the cause; the half-written
    temporary file is removed and ``path`` keeps what it held."""
    import torch

    out = None
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                out = _File(fh)
                torch.save(state, out)
    except Exception as exc:
        recorded = out.error if out is not None else None
        # a stop signal during the write: torch turns it into "unexpected pos"; raise the stop
        # itself (the temporary file is gone, ``path`` unchanged), as anywhere else in the run
        stop = _interruption(recorded) or _interruption(exc)
        if stop is not None:
            raise stop from None
        cause = recorded if recorded is not None else exc
        if not isinstance(cause, OSError):
            raise
        what = cause.strerror or str(cause) or type(cause).__name__
        raise CheckpointWriteError(f"checkpoint {path} could not be written: {what} "
                                   f"(errno {cause.errno})") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same here
        # one line: torch's weights-only refusal spans many lines of advice
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        detail = detail if len(detail) <= 160 else detail[:157] + "…"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{detail}); "
                              "it may be truncated or not an ltscale checkpoint") from None
