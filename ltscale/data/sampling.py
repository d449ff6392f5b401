"""One sampler: (epoch, rank, world size, seed) → the positions this rank reads, in order.

Every backend (torch DataLoader, DALI, feature caching) asks this one object which manifest
positions to read, so they all see identical epochs.

The epoch's **global order** is built first — a permutation of the manifest (instance sampling) or
a class-rebalanced draw of the same length — and cut to a whole number of *global* batches
(``world_size × batch_size``): the tail is dropped (``tail="drop"``, training) or padded by
repeating the order's first positions (``"pad"``); ``"keep"`` (evaluation, feature caching) keeps
every sample exactly once and lets the last batch be short, so ranks may then differ by a batch. Rank ``r`` reads global slots ``r, r + W, r + 2W, …``, so the first ``j``
batches of all ranks together are exactly the first ``j·B·W`` slots of the global order, and
every rank gets the same number of batches.

**Resume rule.** The state records how many global slots were consumed. A resumed sampler —
with the same or another world size — continues at the first slot no rank has consumed and splits
the rest of the epoch over the ranks it has now: no sample is repeated or skipped (apart from
the drop/pad at the epoch's end, recomputed for the new global batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltscale.core.errors import DataError

SHUFFLES = ("global", "block", "none")
BALANCES = ("instance", "class", "sqrt", "progressive")
TAILS = ("drop", "pad", "keep")


@dataclass(frozen=True)
class Batch:
    """What a loader backend is asked to produce: manifest positions and a per-sample seed for the
    augmentation (a function of seed, epoch and global slot, so views do not depend on workers)."""

    positions: np.ndarray
    seeds: np.ndarray
    epoch: int

    def __len__(self) -> int:
        return len(self.positions)


def class_probabilities(counts: np.ndarray, balance: str, progress: float = 0.0) -> np.ndarray:
    """Sampling probability of each class: ∝ n_c (instance), 1 (class), √n_c (sqrt), or the
    progressively balanced mix (1 − t)·instance + t·class with t = ``progress`` ∈ [0, 1]
    (Kang et al. 2020, decoupling representation and classifier)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if balance == "instance":
        w = counts
    elif balance == "class":
        w = present.astype(np.float64)
    elif balance == "sqrt":
        w = np.sqrt(counts)
    elif balance == "progressive":
        inst = counts / counts.sum()
        cls = present / present.sum()
        return (1.0 - progress) * inst + progress * cls
    else:
        raise DataError(f"unknown balance {balance!r}; choose one of {', '.join(BALANCES)}")
    return w / w.sum()


def _largest_remainder(total: int, p: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` that are as close as possible to ``total · p``."""
    raw = total * p
    counts = np.floor(raw).astype(np.int64)
    short = total - counts.sum()
    if short:
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


class EpochSampler:
    """The ordered positions (into the manifest's rows) each rank reads in each epoch.

    ``labels`` (observed, one per position) are needed for the balanced modes; ``rows`` (the index
    rows, whose order is the on-disk order) for block shuffling. ``epochs`` is the stage length,
    needed by ``progressive`` balancing.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int = 0, shuffle: str | bool = "global",
                 tail: str = "drop", rank: int = 0, world_size: int = 1,
                 balance: str = "instance", labels: np.ndarray | None = None,
                 epochs: int | None = None, rows: np.ndarray | None = None,
                 block_size: int = 64, window: int = 16):
        if n <= 0:
            raise DataError("cannot sample from an empty manifest")
        if shuffle is True:
            shuffle = "global"
        elif shuffle is False:
            shuffle = "none"
        if shuffle not in SHUFFLES:
            raise DataError(f"unknown shuffle {shuffle!r}; choose one of {', '.join(SHUFFLES)}")
        if balance not in BALANCES:
            raise DataError(f"unknown balance {balance!r}; choose one of {', '.join(BALANCES)}")
        if balance != "instance" and labels is None:
            raise DataError(f"balance {balance!r} needs the samples' labels")
        if balance == "progressive" and not epochs:
            raise DataError("progressive balancing needs the number of epochs")
        if tail not in TAILS:
            raise DataError(f"unknown tail {tail!r}; choose one of {', '.join(TAILS)}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.tail, self.rank, self.world_size = tail, rank, world_size
        self.balance, self.epochs = balance, epochs
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and (self.labels < 0).any() and balance != "instance":
            raise DataError("class-balanced sampling needs a label for every sample; the "
                            "manifest has unlabeled samples in this selection")
        self.rows = None if rows is None else np.asarray(rows)
        self.block_size, self.window = block_size, window
        self.epoch = 0
        self.start = 0      # global slots consumed before this sampler's first batch this epoch
        self.consumed = 0   # positions this rank has consumed since ``start``
        self._cache: tuple[int, np.ndarray] | None = None

    # --- the epoch's global order -------------------------------------------------------------
    def _rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, salt])

    def _draw(self) -> np.ndarray:
        """The epoch's multiset of positions, before ordering."""
        if self.balance == "instance":
            return np.arange(self.n)
        counts = np.bincount(self.labels)
        t = self.epoch / max(1, self.epochs - 1) if self.epochs else 0.0
        target = _largest_remainder(self.n, class_probabilities(counts, self.balance, min(t, 1.0)))
        rng = self._rng(1)
        by_class = np.argsort(self.labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        out = []
        for c in np.flatnonzero(target):
            members = by_class[starts[c]:starts[c + 1]]
            reps = -(-int(target[c]) // len(members))  # whole permutations, then cut: no sample
            cycle = np.concatenate([rng.permutation(members) for _ in range(reps)])  # repeats
            out.append(cycle[:target[c]])                                           # early
        return np.concatenate(out)

    def _order(self, drawn: np.ndarray) -> np.ndarray:
        rng = self._rng(2)
        if self.shuffle == "none":
            return np.sort(drawn, kind="stable")
        if self.shuffle == "global":
            return rng.permutation(drawn)
        # block: disk-order blocks, blocks shuffled, then ``window`` blocks mixed together, so reads
        # stay within a few regions of the shards while a batch still mixes several regions
        key = drawn if self.rows is None else self.rows[drawn]
        on_disk = drawn[np.argsort(key, kind="stable")]
        blocks = [on_disk[i:i + self.block_size] for i in range(0, len(on_disk), self.block_size)]
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        groups = [np.concatenate(blocks[i:i + self.window])
                  for i in range(0, len(blocks), self.window)]
        return np.concatenate([rng.permutation(g) for g in groups])

    def global_order(self) -> np.ndarray:
        """The epoch's ordered positions (before the tail is cut or padded: that depends on the
        global batch of the ranks reading it, see ``_remaining_slots``)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._order(self._draw()))
        return self._cache[1]

    def _global_batches(self, length: int) -> int:
        per_step = self.world_size * self.batch_size
        return length // per_step if self.tail == "drop" else -(-length // per_step)

    def epoch_length(self) -> int:
        """Samples drawn per epoch before drop/pad (n, also for the balanced modes)."""
        return self.n

    # --- this rank's share ------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Batches each rank reads in a whole epoch."""
        return self._global_batches(self.epoch_length())

    def _remaining_slots(self) -> np.ndarray:
        """Slots from ``start`` on, cut (drop) or padded by wrapping to the order's first
        positions (pad) to whole global batches of the current world size."""
        order = self.global_order()
        rest = len(order) - self.start
        if self.tail == "keep":
            usable = rest
        else:
            usable = self._global_batches(rest) * self.world_size * self.batch_size
        slots = np.arange(self.start, self.start + usable) % max(1, len(order))
        return slots[self.rank::self.world_size]

    def rank_slots(self) -> np.ndarray:
        """Global slots this rank reads for the rest of the epoch (from ``consumed`` on)."""
        return self._remaining_slots()[self.consumed:]

    def rank_positions(self) -> np.ndarray:
        return self.global_order()[self.rank_slots()]

    def remaining_batches(self) -> int:
        return -(-len(self.rank_slots()) // self.batch_size)

    def batches(self):
        """This rank's remaining batches of the epoch, as ``Batch`` requests."""
        order, slots = self.global_order(), self.rank_slots()
        # a per-sample seed from (seed, epoch, slot); the arithmetic wraps modulo 2^64 on purpose
        base = np.uint64((self.seed * 0x9E3779B97F4A7C15 + (self.epoch << 32)) % (1 << 64))
        for i in range(0, len(slots), self.batch_size):
            s = slots[i:i + self.batch_size]
            with np.errstate(over="ignore"):
                seeds = (base + s.astype(np.uint64)) & np.uint64(0x7FFFFFFFFFFFFFFF)
            yield Batch(order[s], seeds.astype(np.int64), self.epoch)

    # --- position bookkeeping (the training loop calls ``advance`` after each step) -------------
    def advance(self, batches: int = 1) -> None:
        self.consumed += batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start, self.consumed = epoch, 0, 0

    def global_consumed(self) -> int:
        return self.start + self.consumed * self.world_size

    def __iter__(self):
        return iter(self.rank_positions().tolist())

    def __len__(self) -> int:
        return len(self.rank_slots())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "global_consumed": self.global_consumed(), "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size,
                "balance": self.balance, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        for key in ("balance", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(f"sampler state was saved with {key}={state[key]!r}, this run "
                                f"uses {getattr(self, key)!r}; the epoch orders would differ")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        if "global_consumed" in state:
            self.start = int(state["global_consumed"])
        else:  # states written before world-size-independent resume: per-rank counts
            self.start = int(state["consumed"]) * self.world_size
        self.consumed = 0
        self._cache = None
