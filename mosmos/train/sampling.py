"""A seeded, sharded, resumable sampler.

The order of an epoch depends only on (seed, epoch), so a run killed at step s of an epoch and
resumed skips exactly the batches it had done and ends with the same number of steps; each rank
takes its own shard, like torch's DistributedSampler, with the tail padded by wrap-around."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        per_rank = math.ceil(n / world_size)
        self.batches_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        self.num_samples = min(per_rank, self.batches_per_epoch * batch_size)
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world_size) * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size][: self.num_samples]

    def __iter__(self):
        # Keys carry the epoch so that per-sample augmentation can be seeded by (seed, epoch, index).
        return iter((self.epoch, i) for i in self._order()[self.skip_batches * self.batch_size:])

    def __len__(self) -> int:
        return self.num_samples - self.skip_batches * self.batch_size
