"""`ltscale data verify`: is a shard set still what its card and index say it is?

Checks, in order: the index loads and its recomputed hash equals the stored one and the card's;
every shard exists with the recorded size and SHA-256; no member of a shard has an absolute or
``..`` name or is a link or special file; every index entry points at a tar header
naming its member with the recorded size; with ``deep``, every image decodes to pixels training
reads (``data.pixels``: a float or 32-bit image is reported, not misread). Each problem is
reported with the shard and sample key. The card's fields are checked too (``data.card``: a field
edited after the build is named), and byte-identical images under different labels or in two
splits are reported as notes (``data.duplicates``), or that the index cannot tell.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltscale.core.errors import DataError
from ltscale.core.hashing import file_sha256
from ltscale.core.progress import bar as progress_bar
from ltscale.data.index import CARD_FILE, ShardIndex
from ltscale.data.tarfmt import check_regular, header_before, safe_member_name


@dataclass
class Problem:
    shard: str
    key: str | None
    what: str

    def __str__(self) -> str:
        return f"{self.shard}: " + (f"sample {self.key}: " if self.key else "") + self.what


@dataclass
class VerifyReport:
    samples: int = 0
    shards: int = 0
    decoded: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that do not fail verification

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(directory: str | Path, deep: bool = False, progress: bool = True) -> VerifyReport:
    directory = Path(directory)
    index = ShardIndex.load(directory).load_all()
    report = VerifyReport(samples=len(index), shards=len(index.shards))
    card_path = directory / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{card_path}: missing or unreadable dataset card ({exc})") from None
    found = index.compute_hash()
    if found != index.content_hash() or found != card.get("index_hash"):
        report.problems.append(Problem(
            "index.npz", None, f"index hash {found} differs from the recorded "
            f"{index.content_hash()} (card: {card.get('index_hash')}); the index was modified"))
    _check_card_and_content(card, index, report)
    recorded = {s["name"]: s for s in card.get("shards", [])}
    bad_shards: set[int] = set()
    for s, name in enumerate(index.shards):
        path = directory / name
        entry = recorded.get(name)
        if not path.exists():
            report.problems.append(Problem(name, None, "shard file is missing"))
            bad_shards.add(s)
        elif entry is None:
            report.problems.append(Problem(name, None, "shard is not listed in card.json"))
        elif path.stat().st_size != entry["bytes"]:
            report.problems.append(Problem(name, None, f"size {path.stat().st_size} bytes, card "
                                           f"records {entry['bytes']} (truncated or changed)"))
        elif file_sha256(path) != entry["sha256"]:
            report.problems.append(Problem(name, None, "SHA-256 differs from the card (the "
                                           "shard changed after it was indexed)"))
    for s, name in enumerate(index.shards):
        if s not in bad_shards and not any(p.shard == name for p in report.problems):
            report.problems += [Problem(name, None, what)
                                for what in _unsafe_members(directory / name)]
    rows = np.argsort(index.shard, kind="stable")
    fds: dict[int, int] = {}
    try:
        for row in progress_bar(rows, enabled=progress, desc="verify", unit="img"):
            s = int(index.shard[row])
            if s in bad_shards:
                continue
            if s not in fds:
                fds[s] = os.open(directory / index.shards[s], os.O_RDONLY)
            problem = _check_entry(index, int(row), fds[s], deep)
            if problem:
                report.problems.append(Problem(index.shards[s], str(index.key[row]), problem))
            elif deep:
                report.decoded += 1
    finally:
        for fd in fds.values():
            os.close(fd)
    return report


def _check_card_and_content(card: dict, index: ShardIndex, report: VerifyReport) -> None:
    from ltscale.data.card import check_card
    from ltscale.data.duplicates import index_duplicates

    problems, notes = check_card(card, index)
    report.problems += [Problem(CARD_FILE, None, what) for what in problems]
    report.notes += notes + index_duplicates(index).lines()


def _unsafe_members(path: Path) -> list[str]:
    """Members of the shard that no reader may accept: absolute or ``..`` names, links and
    special files (checked on every member, also those the index does not point at)."""
    found = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:  # headers only: tarfile seeks over the data
                try:
                    check_regular(info, "shard")
                except DataError as exc:
                    found.append(str(exc).removeprefix("shard: "))
    except (tarfile.TarError, OSError) as exc:
        found.append(f"not a readable tar file ({exc})")
    return found


def _check_entry(index: ShardIndex, row: int, fd: int, deep: bool) -> str | None:
    member, offset, size = index.member(row), int(index.offset[row]), int(index.size[row])
    try:
        safe_member_name(member, "index")
        info = header_before(fd, offset, "index")
    except DataError as exc:
        return str(exc).removeprefix("index: ")
    # a long name lives in a PAX record before this header; the header keeps a truncated form
    if info.name != member and not (len(member) > 99 and member.startswith(info.name[:90])):
        return f"index points at member {info.name!r}, expected {member!r}"
    if not info.isfile():
        return f"index points at member {info.name!r}, which is a link or special file"
    if info.size != size:
        return f"member has {info.size} bytes, index records {size}"
    if deep:
        from PIL import Image

        from ltscale.data.pixels import unreadable

        data = os.pread(fd, size, offset)
        if len(data) != size:
            return f"shard ends after {len(data)} of {size} bytes"
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                misread = unreadable(img)  # decodes, but training cannot read its pixels
        except Exception as exc:  # PIL raises many types for broken images
            return f"image does not decode ({type(exc).__name__}: {exc})"
        if misread:
            return f"training would refuse it: {misread}"
    return None


CHECKS = ("size", "checksum", "none")


def check_shards(index: ShardIndex, rows: np.ndarray | None = None, mode: str = "size") -> int:
    """Before training: every shard ``rows`` touch exists and still has the size (``size``) or
    SHA-256 (``checksum``) its card recorded. Raises ``DataError`` naming the first bad shard;
    returns the number of shards checked. ``size`` costs one ``stat`` per shard; ``checksum``
    reads the shards once (use it for small or untrusted datasets; ``data verify`` for audits)."""
    if mode not in CHECKS:
        raise DataError(f"unknown shard check {mode!r}; choose one of {', '.join(CHECKS)}")
    if mode == "none":
        return 0
    directory = Path(index.root)
    try:
        card = json.loads((directory / CARD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{directory / CARD_FILE}: missing or unreadable dataset card ({exc}); "
                        "rebuild the dataset with `ltscale data build`") from None
    recorded = {s["name"]: s for s in card.get("shards", [])}
    used = np.unique(index.shard if rows is None else index.shard[np.asarray(rows)])
    for s in used.tolist():
        name = index.shards[s]
        path = directory / name
        entry = recorded.get(name)
        if entry is None:
            raise DataError(f"shard {path} is not listed in {directory / CARD_FILE}")
        if not path.exists():
            raise DataError(f"shard {path} is missing; rebuild the dataset with "
                            "`ltscale data build` or restore the file")
        st = path.stat()
        size = st.st_size
        if size != entry["bytes"]:
            raise DataError(f"shard {path} has {size} bytes but was indexed with "
                            f"{entry['bytes']}: it was truncated or changed after indexing; "
                            "refusing to train on it (`ltscale data verify` lists every problem)")
        if mode == "checksum":
            # each stage builds several loaders over the same shards: hash a file once per
            # process unless it changed since (size, mtime, inode)
            stamp = (size, st.st_mtime_ns, st.st_ino)
            if index.hashed_shards.get(name) == stamp:
                continue
            if file_sha256(path) != entry["sha256"]:
                raise DataError(f"shard {path}: SHA-256 differs from the one recorded when it "
                                "was indexed (it changed since); refusing to train on it")
            index.hashed_shards[name] = stamp
    return len(used)
