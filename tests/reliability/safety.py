"""Helpers of the data-safety and input-hardening tests: byte snapshots of input files and the
CLI called as a user would, asserting the one-line refusal."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from ltscale.cli import main as cli


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (and of ``roots`` that are files), by path."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], *needles: str, rc: int = 2, one_line: bool = True) -> str:
    """Run ``ltscale ARGV``; assert exit ``rc``, one line on stderr (a recipe's validation
    paragraph, one line per bad key, with ``one_line=False``) without a traceback that contains
    every needle; return the message."""
    capsys.readouterr()
    code = cli([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == rc, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and (len(lines) == 1 or not one_line), err
    assert lines[0].startswith("ltscale: "), err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    return err


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
