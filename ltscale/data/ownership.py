"""What ltscale may delete or replace: only a dataset folder it wrote (its card carries
``OWNER_MARKER`` and lists the files of the build) holding nothing else; and never an output that
is an input of the same command, or a folder containing or contained by one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.index import CARD_FILE

# A dataset card written by ltscale carries this marker and the list of files the build wrote;
# only such a folder, holding nothing else, is ever replaced.
OWNER_MARKER = "ltscale dataset"


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_output_path(out: str | Path, inputs, what: str = "--out") -> None:
    """Refuse an output that is an input, or a folder containing or contained by one."""
    o = _resolved(out)
    for given in inputs:
        if given is None or str(given) == "":
            continue
        i = _resolved(given)
        if o == i:
            raise DataError(f"{what} {out} is the input {given} itself; write to a separate "
                            "folder (nothing was changed)")
        if i.is_relative_to(o):
            raise DataError(f"{what} {out} contains the input {given}; write to a folder "
                            "outside it (nothing was changed)")
        if o.is_relative_to(i) and i.is_dir():
            raise DataError(f"{what} {out} lies inside the input {given}; write to a folder "
                            "outside it (nothing was changed)")


def _card_files(card: dict) -> set[str]:
    files = {CARD_FILE, "index.npz"}
    if not card.get("in_place"):
        files |= {s["name"] for s in card.get("shards", []) if isinstance(s, dict)}
    return files


def owned_dataset(path: str | Path) -> str | None:
    """None when ``path`` is a dataset folder ltscale wrote and holds nothing else; otherwise
    why it is not (a phrase for an error message)."""
    path = Path(path)
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is not a folder"
    try:
        card = json.loads((path / CARD_FILE).read_text())
    except FileNotFoundError:
        return f"has no {CARD_FILE}: it is not an ltscale dataset"
    except (OSError, ValueError):
        return f"has an unreadable {CARD_FILE}"
    legacy = "ltscale_version" in card and str(card.get("format", "")).startswith("webdataset")
    if not isinstance(card, dict) or not (card.get("written_by") == OWNER_MARKER or legacy):
        return f"its {CARD_FILE} carries no ltscale marker"
    files = set(card.get("files") or _card_files(card))
    foreign = sorted(p.name for p in path.iterdir() if p.name not in files)
    if foreign:
        return (f"holds files ltscale did not write ({', '.join(foreign[:5])}"
                f"{', …' if len(foreign) > 5 else ''})")
    return None


def remove_owned(folder: Path) -> None:
    """Delete a replaced dataset: the files its card lists, then the (then empty) folder."""
    try:
        card = json.loads((folder / CARD_FILE).read_text())
        files = set(card.get("files") or _card_files(card))
    except (OSError, ValueError):
        files = {CARD_FILE}
    for name in files:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something unexpected is left: keep it rather than delete what is not ours
