"""This rank's share of a probe loader when a trainer runs several processes.

A trainer's DDP sampler is injected into its own dataloaders only; the probe loader handed to a
callback is the same on every rank. ``spectrum`` all-reduces the statistics, so if each rank
streamed all of it every sample would count ``world_size`` times. :func:`rank_shard` hands rank
``r`` of ``W`` batches ``r, r + W, r + 2W, ...`` instead, unless the loader already has a
``DistributedSampler`` (then it is already this rank's shard).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from collapse_probe._utils.ranks import rank, world_size


class _EveryWorldthBatch:
    def __init__(self, loader: Iterable, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.rank, None, self.world)


def rank_shard(loader: Iterable) -> Iterable:
    """``loader`` itself in one process or with a ``DistributedSampler``; else this rank's batches.

    >>> list(rank_shard([1, 2, 3]))   # not distributed: every batch
    [1, 2, 3]
    >>> list(_EveryWorldthBatch([0, 1, 2, 3, 4], rank=1, world=2))
    [1, 3]
    """
    world = world_size()
    if world == 1:
        return loader
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    return _EveryWorldthBatch(loader, rank(), world)
