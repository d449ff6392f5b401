"""Indexed reads: fetch exactly the image bytes of chosen samples from the shards."""

from __future__ import annotations

import os
from pathlib import Path

from ltscale.data.index import ShardIndex
from ltscale.errors import DataError


class IndexedReader:
    """Reads sample bytes by (shard, offset, size) with ``os.pread``; counts the bytes it reads.

    File handles are opened lazily per process, so a reader can be handed to forked DataLoader
    workers.
    """

    def __init__(self, index: ShardIndex):
        if index.root is None:
            raise DataError("the index has no directory; load it with ShardIndex.load(DIR)")
        self.index = index
        self.root = Path(index.root)
        self.bytes_read = 0
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
            self._fds, self._pid, self.bytes_read = {}, os.getpid(), 0
        if shard not in self._fds:
            path = self.root / self.index.shards[shard]
            try:
                self._fds[shard] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataError(f"shard {path} is missing; the dataset at {self.root} is "
                                "incomplete — rebuild it with `ltscale data build`") from None
        return self._fds[shard]

    def read(self, row: int) -> bytes:
        shard, offset, size = (int(self.index.shard[row]), int(self.index.offset[row]),
                               int(self.index.size[row]))
        data = os.pread(self._fd(shard), size, offset)
        self.bytes_read += len(data)
        if len(data) != size:
            raise DataError(f"sample {self.index.key[row]}: shard {self.index.shards[shard]} ends "
                            f"after {len(data)} of {size} bytes at offset {offset}; the shard is "
                            "truncated")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state
