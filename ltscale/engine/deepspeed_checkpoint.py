"""DeepSpeed checkpoint files on disk: ``NAME-<step>.pt`` (the loop's state, naming its data
directory) beside ``NAME-<step>.ds`` (DeepSpeed's own shards), written through a hidden
temporary directory; peeking at one without DeepSpeed, and removing data directories whose
``.pt`` file retention deleted. ``DeepSpeedBackend`` (``deepspeed_backend.py``) writes them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ltscale.core.errors import CheckpointError
from ltscale.engine.checkpoint import load_checkpoint

DATA_SUFFIX = ".ds"
MODEL_STATES = "mp_rank_00_model_states.pt"  # written last-but-one by DeepSpeed's rank 0


def data_dir(path: Path) -> Path:
    """The DeepSpeed checkpoint directory belonging to checkpoint file ``path``."""
    path = Path(path)
    return path.with_name(path.stem + DATA_SUFFIX)


def checkpoint_name(path: Path) -> str:
    """``NAME`` of checkpoint file ``NAME-<step>.pt``."""
    return Path(path).stem.rsplit("-", 1)[0]


def partial_dir(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.stem}{DATA_SUFFIX}.partial")


def peek_checkpoint(path: Path) -> dict | None:
    """The loop state saved with DeepSpeed checkpoint ``path`` without restoring anything; None
    when there is no such file; ``CheckpointError`` when it is unreadable, not a DeepSpeed
    checkpoint or its data directory is missing or incomplete."""
    path = Path(path)
    if not path.exists():
        return None
    meta = load_checkpoint(path)
    info = meta.get("deepspeed") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: not a DeepSpeed checkpoint (written by another backend); "
                              "resume it with that backend or start afresh")
    data = path.parent / info.get("dir", "")
    if not (data / MODEL_STATES).is_file():
        raise CheckpointError(f"{path}: its DeepSpeed data directory {data} is missing or "
                              "incomplete")
    return meta


def prune_orphans(parent: Path, name: str) -> None:
    """Delete checkpoint ``name``'s ``NAME-<step>.ds`` directories whose ``NAME-<step>.pt`` file
    no longer exists (removed by the loop's retention) and temporary directories left by killed
    saves."""
    if not parent.is_dir():
        return
    stem = re.escape(name) + r"-\d+" + re.escape(DATA_SUFFIX)
    for d in parent.iterdir():
        if not d.is_dir():
            continue
        if re.fullmatch(r"\." + stem + r"\.partial", d.name):
            shutil.rmtree(d, ignore_errors=True)
        elif (re.fullmatch(stem, d.name)
              and not d.with_name(d.name[:-len(DATA_SUFFIX)] + ".pt").exists()):
            shutil.rmtree(d, ignore_errors=True)
