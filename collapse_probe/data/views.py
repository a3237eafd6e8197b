"""q augmented views of every image, reproducible: the input of LiDAR (``collapse-probe lidar``).

Each image becomes a (q, 3, S, S) stack of views made by the paper's augmentations
(:func:`collapse_probe.data.augment.view_transforms`): views alternate the paper's view-1 and
view-2 transforms (blur p = 1.0 / 0.1, solarize p = 0.0 / 0.2). The random draws for image i
come from torch's generator seeded with ``seed * 1_000_003 + i`` inside a forked RNG state, so the
views depend only on (seed, image), never on batch size, worker count or order, and the
caller's RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from collapse_probe.data.augment import view_transforms
from collapse_probe.data.builtin import builtin_dataset, builtin_info, is_builtin
from collapse_probe.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFiles,
    SkippingLoader,
    _BuiltinItems,
    collate_skipping,
    list_images,
)
from collapse_probe.data.subset import seeded_subset


class ViewStack:
    """``image -> (q, 3, S, S)``: view j made by ``transforms[j % len(transforms)]``; picklable."""

    def __init__(self, transforms: tuple[Callable[[Any], torch.Tensor], ...], views: int):
        self.transforms, self.views = transforms, views

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.transforms[j % len(self.transforms)](image) for j in range(self.views)])


class SeededItems(torch.utils.data.Dataset):
    """``dataset[i]`` drawn under torch's RNG seeded by ``(seed, i)``, the caller's RNG state restored."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + int(index))
            return self.dataset[index]


def open_views(
    data: str | Path,
    *,
    views: int,
    image_size: int = 224,
    batch_size: int = 64,
    workers: int = 0,
    max_samples: int | None = None,
    strict: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> SkippingLoader:
    """An image folder or ``builtin:NAME`` as batches of (B, q, 3, S, S) augmented views.

    Built-in data sets use their ``val`` split and their own normalisation, as the trainer does;
    folders ImageNet's, unless ``mean``/``std`` are given (a Hugging Face folder's processor).
    ``max_samples`` keeps the seeded random subset of :func:`~collapse_probe.data.subset.seeded_subset`
    (seed 0, as ``open_images``), not the first images.
    ``world_size > 1`` keeps this process's shard: every ``world_size``-th image from ``rank`` (of
    the ``max_samples`` kept), each with the views it has unsharded (they depend on its index only).

    >>> loader = open_views("builtin:digits", views=4, image_size=16, batch_size=50, max_samples=100)
    >>> [tuple(x.shape) for x in loader]
    [(50, 4, 3, 16, 16), (50, 4, 3, 16, 16)]
    """
    if is_builtin(str(data)):
        info = builtin_info(str(data))
        stack = ViewStack(view_transforms(image_size, mean=mean or info.mean, std=std or info.std), views)
        dataset: torch.utils.data.Dataset = _BuiltinItems(builtin_dataset(str(data), split="val", transform=stack))
        keep = seeded_subset(len(dataset), max_samples)
        if keep is not None:
            dataset = torch.utils.data.Subset(dataset, keep)
    else:
        stack = ViewStack(view_transforms(image_size, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD), views)
        dataset = ImageFiles(list_images(data, max_samples=max_samples), stack)
    items: torch.utils.data.Dataset = SeededItems(dataset, seed)
    if world_size > 1:
        items = torch.utils.data.Subset(items, range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_skipping)
    return SkippingLoader(loader, strict=strict, n_images=len(items))
