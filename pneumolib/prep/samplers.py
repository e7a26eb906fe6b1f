"""Samplers whose order is a function of (seed, epoch) and that shard themselves over processes.

Both subclass :class:`torch.utils.data.DistributedSampler`, so Lightning neither replaces
nor wraps them (with ``use_distributed_sampler``, it leaves a loader alone whose sampler
already is one) and calls their ``set_epoch`` at the start of every epoch, also on a resumed
run (with the epoch restored from the checkpoint). The process count and rank are read when
the sampler is iterated, so one loader serves 1 or N processes.

- :class:`TrainSampler`: a permutation of the items drawn from ``(seed, epoch)`` only, so an
  interrupted-then-resumed run sees exactly the batches the uninterrupted run saw. It yields
  ``(position, epoch)`` pairs: :class:`~pneumolib.prep.loading.SplitDataset` seeds each
  item's online augmentation from ``(seed, epoch, item)``, the same in any worker process.
- :class:`EvalSampler`: the items in order, padded with the first items so that every
  process gets as many as the others (what ``DistributedSampler(shuffle=False)`` does);
  the metrics drop the padded duplicates by item index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler

__all__ = ["EvalSampler", "TrainSampler", "epoch_order", "process_group"]


def process_group() -> tuple[int, int]:
    """``(world size, rank)`` of the running process group, ``(1, 0)`` outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """``(n,)`` int64: the permutation of ``range(n)`` for ``epoch``, from ``(seed, epoch)`` only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5A3F1E, int(epoch)]))
    return rng.permutation(int(n)).astype(np.int64)


class _Sharded(DistributedSampler):
    """The part every process takes of an order padded to a multiple of the process count."""

    def __init__(self, n: int, seed: int = 0):  # noqa: D107 - no process group needed here
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = False
        self.drop_last = False

    @property
    def num_replicas(self) -> int:  # read by some Lightning code paths
        return process_group()[0]

    @property
    def rank(self) -> int:
        return process_group()[1]

    @property
    def num_samples(self) -> int:
        return math.ceil(self.n / process_group()[0]) if self.n else 0

    @property
    def total_size(self) -> int:
        return self.num_samples * process_group()[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def _order(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def _mine(self) -> np.ndarray:
        world, rank = process_group()
        order = self._order()
        if order.size and self.total_size > order.size:
            order = np.resize(order, self.total_size)  # pad by repeating from the start
        return order[rank::world]


class EvalSampler(_Sharded):
    """Items ``0 .. n-1`` in order (this process's share); see the module docstring."""

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine().tolist())


class TrainSampler(_Sharded):
    """A ``(seed, epoch)`` permutation of the items, yielding ``(position, epoch)`` pairs."""

    def __init__(self, n: int, seed: int = 0):  # noqa: D107
        super().__init__(n, seed)
        self.shuffle = True

    def _order(self) -> np.ndarray:
        return epoch_order(self.n, self.seed, self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(k, epoch) for k in self._mine().tolist()])
