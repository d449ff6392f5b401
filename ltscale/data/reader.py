"""Indexed reads: fetch exactly the image bytes of chosen samples from the shards.

``read_many`` sorts the requested rows by (shard, offset) and merges members that lie close
together in one shard into a single ``pread``. Two members are merged only when the bytes between
them (tar headers, label members, padding) are at most ``max_gap`` and all the gap bytes of the
merged read stay within ``overhead`` of its data, so coalescing never makes the bytes read exceed the selected bytes by more than
``overhead`` (10 % by default) while neighbouring samples cost one system call instead of many.
A merged read stays below ``max_span`` (1 MiB): measured on page-cached 65 KB JPEGs, 17 MB spans
read at a third of ``cat``'s speed (fresh buffers fault in page by page and every member is copied
out once more), while spans up to ~2 MB match it; small members (PNG digits of a few hundred
bytes) gain the most from merging.

Counters (per process; loaders sum them over workers): ``bytes_read``, ``reads`` (system calls)
and ``samples``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex


class IndexedReader:
    """Reads sample bytes by (shard, offset, size) with ``os.pread``.

    File handles are opened lazily per process, so a reader can be handed to forked DataLoader
    workers.
    """

    def __init__(self, index: ShardIndex, max_gap: int = 8192, overhead: float = 0.1,
                 max_span: int = 1 << 20):
        if index.root is None:
            raise DataError("the index has no directory; load it with ShardIndex.load(DIR)")
        self.index = index
        self.root = Path(index.root)
        self.max_gap, self.overhead, self.max_span = max_gap, overhead, max_span
        self.bytes_read = self.reads = self.samples = 0
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
            self._fds, self._pid = {}, os.getpid()
            self.bytes_read = self.reads = self.samples = 0
        if shard not in self._fds:
            path = self.shard_path(shard)
            try:
                self._fds[shard] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataError(f"shard {path} is missing; the dataset at {self.root} is "
                                "incomplete — rebuild it with `ltscale data build`") from None
        return self._fds[shard]

    def shard_path(self, shard: int) -> Path:
        return self.root / self.index.shards[shard]

    def where(self, row: int) -> str:
        """``sample KEY in shard NAME``: how errors name a sample."""
        return f"sample {self.index.key[row]} in shard {self.index.shards[self.index.shard[row]]}"

    def _pread(self, shard: int, size: int, offset: int) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        self.bytes_read += len(data)
        self.reads += 1
        return data

    def read(self, row: int) -> bytes:
        """One sample's bytes; raises ``DataError`` naming sample and shard if it is truncated."""
        out = self.read_many(np.array([row]))[0]
        if isinstance(out, Exception):
            raise out
        return out

    def plan(self, rows: np.ndarray) -> list[tuple[int, int, int, list[int]]]:
        """Coalesced reads for ``rows``: (shard, offset, size, [positions in ``rows``])."""
        rows = np.asarray(rows, dtype=np.int64)
        shard, offset, size = self.index.shard[rows], self.index.offset[rows], self.index.size[rows]
        order = np.lexsort((offset, shard))
        runs: list[list] = []   # [shard, offset, length, data bytes, positions]
        for i in order.tolist():
            s, o, n = int(shard[i]), int(offset[i]), int(size[i])
            if runs and runs[-1][0] == s:
                run = runs[-1]
                end = run[1] + run[2]
                if o + n <= end:  # the same member asked for twice
                    run[4].append(i)
                    continue
                gap, span, data = o - end, o + n - run[1], run[3] + n
                # the run's gaps together (span − data) stay within overhead × its data
                if (0 <= gap <= self.max_gap and span - data <= self.overhead * data
                        and span <= self.max_span):
                    run[2], run[3] = span, data
                    run[4].append(i)
                    continue
            runs.append([s, o, n, n, [i]])
        return [(s, o, n, members) for s, o, n, _, members in runs]

    def read_many(self, rows: np.ndarray) -> list[bytes | DataError]:
        """Bytes of each row in ``rows`` (in that order). A truncated member yields a
        ``DataError`` in its place (the caller's error policy decides), never short bytes."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[bytes | DataError] = [b""] * len(rows)
        offsets, sizes = self.index.offset[rows], self.index.size[rows]
        for shard, start, length, members in self.plan(rows):
            span = self._pread(shard, length, start)
            for i in members:
                lo = int(offsets[i]) - start
                want = int(sizes[i])
                piece = span[lo:lo + want]
                if len(piece) != want:
                    out[i] = DataError(f"{self.where(int(rows[i]))}: the shard ends after "
                                       f"{max(0, len(piece))} of {want} bytes at offset "
                                       f"{int(offsets[i])}; the shard is truncated")
                else:
                    out[i] = piece
                    self.samples += 1
        return out

    def counters(self) -> dict[str, int]:
        return {"bytes_read": self.bytes_read, "reads": self.reads, "samples": self.samples}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state
