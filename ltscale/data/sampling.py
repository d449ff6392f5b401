"""One sampler: (epoch, rank, world size, seed) → the positions this rank reads, in order."""

from __future__ import annotations

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler[int]):
    """Global shuffle per epoch, split across ranks so every rank gets the same number of batches.

    With ``drop_last`` the epoch is cut to a multiple of ``world_size * batch_size``; otherwise it
    is padded by repeating the first positions of the permutation. The training loop records how
    many positions it consumed (``consumed``, in the state dict) — not the iterator, which
    DataLoader workers run ahead of — so a resumed run continues with exactly the next batch.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("cannot sample from an empty manifest")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0
        self.consumed = 0

    def _global_order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return np.arange(self.n)

    def batches_per_epoch(self) -> int:
        per_step = self.world_size * self.batch_size
        return self.n // per_step if self.drop_last else -(-self.n // per_step)

    def rank_positions(self) -> np.ndarray:
        order = self._global_order()
        total = self.batches_per_epoch() * self.world_size * self.batch_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[:total][self.rank::self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self):
        return iter(self.rank_positions()[self.consumed:].tolist())

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size - self.consumed

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.seed = state["epoch"], state["consumed"], state["seed"]
