"""A resumable, rank-aware batch sampler.

The train order of an epoch is one permutation of the dataset drawn from
``(seed, epoch)`` alone, cut into *global* batches of ``batch_size * world_size``
samples; rank ``r`` takes the ``r``-th slice of each global batch. So:

- resuming at micro-batch ``k`` of an epoch is exact: skip ``k`` batches, no data is
  read or consumed from any random generator to get there;
- the samples of one optimizer step are the same whatever the number of processes
  (two processes with batch 4 see the same 8 studies as one process with batch 8),
  which is what makes a distributed run comparable with a single-process one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches (lists of dataset indices) for the current epoch.

    Args:
        n: dataset length.
        batch_size: samples per batch on one rank.
        rank: this process's rank.
        world_size: number of processes.
        seed: run seed; the epoch's permutation depends on ``(seed, epoch)`` only.
        shuffle: permute each epoch (train) or keep dataset order.
        drop_last: drop the last incomplete global batch. When that would leave no
            batch at all it is kept, so a tiny split still trains.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_batch`` batches."""
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def num_batches(self) -> int:
        """Batches per epoch on every rank (the same on all ranks)."""
        full, rest = divmod(self.n, self.global_batch_size)
        if rest and (not self.drop_last or full == 0):
            return full + 1
        return full

    def epoch_batches(self) -> list[list[int]]:
        """All of this rank's batches of the current epoch, in order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        out = []
        gbs = self.global_batch_size
        for b in range(self.num_batches()):
            chunk = order[b * gbs:(b + 1) * gbs]
            if len(chunk) == gbs:
                mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            else:
                # A short last global batch is split as evenly as possible; a rank may
                # get nothing, and the engine skips a step that is empty on any rank.
                mine = torch.tensor_split(chunk, self.world_size)[self.rank]
            out.append(mine.tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.start_batch:]

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)
