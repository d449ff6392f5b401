"""Tar details shared by the shard writer, the in-place WebDataset indexer and `data verify`.

Members are written deterministically (fixed mtime, owner and mode) so the same input gives
byte-identical shards. Every reader refuses member names that could escape a directory and
members that are links or devices.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from ltscale.core.errors import DataError

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: shards do not depend on when they were built
BLOCK = 512


def padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def safe_member_name(name: str, where: str) -> str:
    """Refuse absolute names, ``..`` components and empty names; return the name."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{where}: tar member {name!r} has an absolute or '..' path; refusing "
                        "to read a shard that could write or read outside its directory")
    return name


def check_regular(info: tarfile.TarInfo, where: str) -> None:
    safe_member_name(info.name, where)
    if not info.isfile():
        kind = "link" if (info.issym() or info.islnk()) else "special file"
        raise DataError(f"{where}: tar member {info.name!r} is a {kind}; shards may hold only "
                        "regular files")


def member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingFile:
    """A write-only file that hashes what passes through it (no second read for checksums)."""

    def __init__(self, path):
        self.fh = open(path, "wb")
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.fh.tell()

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


class TarWriter:
    """Appends members to a new tar file and reports where each member's data starts; the
    SHA-256 of the finished file is ``sha256`` after ``close``."""

    def __init__(self, path: str | os.PathLike):
        self._file = _HashingFile(path)
        self.tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.sha256: str | None = None

    def add(self, name: str, data: bytes) -> int:
        self.tar.addfile(member_info(name, len(data)), io.BytesIO(data))
        # after addfile the stream sits at the end of the padded data block
        return self.tar.offset - padded(len(data))

    def close(self) -> None:
        self.tar.close()  # writes the end-of-archive blocks through the hashing file
        self._file.close()
        self.sha256 = self._file.sha.hexdigest()


def header_before(fd: int, offset: int, where: str) -> tarfile.TarInfo:
    """Parse the tar header block that precedes the member data at ``offset``."""
    if offset < BLOCK:
        raise DataError(f"{where}: offset {offset} leaves no room for a tar header")
    block = os.pread(fd, BLOCK, offset - BLOCK)
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise DataError(f"{where}: no valid tar header before offset {offset} ({exc})") from None
