"""ltscale's log lines: the module ``logging`` under the ``ltscale`` logger.

Each module logs through ``logging.getLogger(__name__)``. Importing ltscale gives that tree one
handler: ``ltscale: <message>`` lines on the current ``sys.stderr``. Info lines come from rank 0
only (a multi-process job would print each one once per rank); warnings and errors come from
every rank. ``LTSCALE_LOG_LEVEL`` (e.g. ``WARNING``) sets the level. The tree does not
propagate to the root logger, so an application's own ``basicConfig`` does not print each line
twice; set ``logging.getLogger("ltscale").propagate = True`` to route them there instead."""

from __future__ import annotations

import logging
import os
import sys

ROOT = "ltscale"


class _CurrentStderr(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a line is emitted (a
    redirected stream, pytest's capture), not the one at import time."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property decides
        pass


class _MainRankInfo(logging.Filter):
    """Info (and below) from rank 0 of an initialised process group only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        dist = sys.modules.get("torch.distributed")
        return not (dist is not None and dist.is_available() and dist.is_initialized()
                    and dist.get_rank() != 0)


def install() -> None:
    """Give the ``ltscale`` logger its handler (once per process)."""
    logger = logging.getLogger(ROOT)
    if any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("ltscale: %(message)s"))
    handler.addFilter(_MainRankInfo())
    logger.addHandler(handler)
    level = os.environ.get("LTSCALE_LOG_LEVEL", "INFO").upper()
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    logger.propagate = False
