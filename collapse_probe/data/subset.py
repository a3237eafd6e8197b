"""The one seeded random subset every ``max_samples`` of the CLI draws (image folders, built-in sets,
views for LiDAR, the trainer's ``--train-subset``): the same indices for the same (total, size, seed)."""

from __future__ import annotations

import torch


def seeded_subset(total: int, size: int | None, seed: int = 0) -> list[int] | None:
    """``size`` indices of ``range(total)``, drawn uniformly without replacement by torch's generator
    seeded with ``seed``, sorted; None when ``size`` is None or keeps everything.

    Drawn uniformly, not the first ``size``, so class folders (and built-in sets sorted by class)
    stay balanced.

    >>> keep = seeded_subset(10, 3)
    >>> len(keep), keep == sorted(keep), keep == seeded_subset(10, 3), seeded_subset(10, None), seeded_subset(3, 5)
    (3, True, True, None, None)
    """
    if size is None or size >= total:
        return None
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=generator)[:size].sort().values.tolist()
