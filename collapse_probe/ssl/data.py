"""Training streams of two augmented views, and the held-out loader the monitor and probes use.

Two ways in, chosen by the data and ``config.augment``:

* :class:`TensorStream` -- the whole data set held as one uint8 tensor on the device (the built-in
  demo data); each step slices this process's share of a seeded global permutation and augments
  both views with :class:`~collapse_probe.data.augment.BatchAugment`. No DataLoader, no workers.
* :class:`LoaderStream` -- an ImageFolder ``train/`` through a DataLoader with a
  DistributedSampler: ``augment="pil"`` runs the torchvision v2 views in the workers;
  ``augment="tensor"`` crops + flips in the workers and does the rest on the device.

Both yield ``(x1, x2, y)`` on the device, where x1, x2 are (B_local, 3, S, S) normalised views.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from collapse_probe.data.augment import BatchAugment, TwoViews, crop_transform, view_transforms
from collapse_probe.data.builtin import builtin_dataset, builtin_info, is_builtin
from collapse_probe.data.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_image
from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.config import TrainConfig
from collapse_probe.ssl.distributed import DistInfo

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def normalization(data: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a data source: the built-in set's own, ImageNet's for folders."""
    if is_builtin(data):
        info = builtin_info(data)
        return info.mean, info.std
    return IMAGENET_MEAN, IMAGENET_STD


def builtin_tensors(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A built-in split as ``(uint8 images (N, 3, H, W), int64 labels (N,))``."""
    dataset = builtin_dataset(data, split=split)
    if dataset.images.shape[1:] == (dataset.info.image_size,) * 2:  # native size: no PIL round trip
        images = torch.from_numpy(np.ascontiguousarray(dataset.images))
        return images[:, None].expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(dataset.labels)
    pairs = [dataset[i] for i in range(len(dataset))]
    images = np.stack([np.asarray(image) for image, _ in pairs])  # (N, H, W, 3)
    labels = torch.as_tensor([label for _, label in pairs], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def image_folder(root: str, split: str, transform: Any) -> torch.utils.data.Dataset:
    """``root/split`` (or ``root`` itself when it has no such subfolder) as an ImageFolder.

    Images are opened by :func:`~collapse_probe.data.images.load_image` (8-bit RGB, 16-bit images
    scaled rather than clipped), as on the probe's PIL path."""
    from torchvision.datasets import ImageFolder

    path = os.path.join(root, split)
    if not os.path.isdir(path):
        if split != "train" or not os.path.isdir(root):
            raise CollapseProbeError(f"no {split}/ folder under {root!r}")
        path = root
    try:
        return ImageFolder(path, transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as error:
        raise CollapseProbeError(f"cannot read images from {path!r}: {error}") from error


class TensorStream:
    """Batches of two views from an in-memory uint8 image tensor, sharded over processes."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, dist: DistInfo, device: torch.device):
        if len(images) < config.batch_size:
            raise CollapseProbeError(f"batch size {config.batch_size} is larger than the data set ({len(images)} images)")
        self.images, self.labels = images.to(device), labels.to(device)
        self.global_batch, self.dist, self.device, self.seed = config.batch_size, dist, device, config.seed
        self.local_batch = config.batch_size // dist.world_size
        mean, std = normalization(config.data)
        scale = (config.crop_min_scale, 1.0)
        self.views = [BatchAugment(config.image_size, view=v, mean=mean, std=std, crop_scale=scale) for v in (1, 2)]
        self.num_classes = int(labels.max()) + 1
        self.steps = len(images) // config.batch_size
        if config.max_steps_per_epoch:
            self.steps = min(self.steps, config.max_steps_per_epoch)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[Batch]:
        # Same permutation on every process (seed + epoch); each takes its own slice of a global batch.
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        order = order.to(self.device)  # one host-to-device copy per epoch: a copy per step would sync the GPU each step
        gen = torch.Generator(self.device).manual_seed(self.seed * 100003 + epoch * 1009 + self.dist.rank + 1)
        for step in range(self.steps):
            start = step * self.global_batch + self.dist.rank * self.local_batch
            idx = order[start : start + self.local_batch]
            images = self.images[idx]
            yield self.views[0](images, gen), self.views[1](images, gen), self.labels[idx]


class LoaderStream:
    """Batches of two views from an image folder via DataLoader + DistributedSampler."""

    def __init__(self, config: TrainConfig, dist: DistInfo, device: torch.device):
        mean, std = normalization(config.data)
        scale = (config.crop_min_scale, 1.0)
        if config.augment == "pil":
            transform = TwoViews(*view_transforms(config.image_size, mean=mean, std=std, crop_scale=scale))
            self.views = None
        else:
            crop = crop_transform(config.image_size, crop_scale=scale)
            transform = TwoViews(crop, crop)
            self.views = [BatchAugment(config.image_size, view=v, mean=mean, std=std, crop=False) for v in (1, 2)]
        dataset = image_folder(config.data, "train", transform)
        classes = dataset.classes
        keep = subset_indices(len(dataset), config.train_subset)
        if keep is not None:
            dataset = torch.utils.data.Subset(dataset, keep.tolist())
        if len(dataset) < config.batch_size:
            raise CollapseProbeError(f"batch size {config.batch_size} is larger than the data set ({len(dataset)} images)")
        self.sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.seed, drop_last=True
        )
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size // dist.world_size, sampler=self.sampler, drop_last=True,
            num_workers=config.workers, pin_memory=device.type == "cuda",
            # Workers restart every epoch and draw their seeds from the per-epoch seed set in
            # epoch(), so a resumed run sees the same augmentations as an uninterrupted one.
            persistent_workers=False,
        )
        self.device, self.seed, self.rank = device, config.seed, dist.rank
        self.num_classes = len(classes)
        self.steps = len(self.loader)
        if config.max_steps_per_epoch:
            self.steps = min(self.steps, config.max_steps_per_epoch)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.seed * 100003 + epoch * 1009 + self.rank + 1)  # worker seeds derive from it
        gen = torch.Generator(self.device).manual_seed(self.seed * 100003 + epoch * 1009 + self.rank + 1)
        for step, ((x1, x2), y) in enumerate(self.loader):
            if step >= self.steps:
                break
            x1 = x1.to(self.device, non_blocking=True)
            x2 = x2.to(self.device, non_blocking=True)
            if self.views is not None:
                x1, x2 = self.views[0](x1, gen), self.views[1](x2, gen)
            yield x1, x2, y.to(self.device, non_blocking=True)


def subset_indices(total: int, size: int | None) -> torch.Tensor | None:
    """The ``train_subset`` images: ``size`` indices of ``range(total)``, sorted, drawn with a fixed
    seed (0) so that every run and every seed trains on the same images; None for all of them.

    >>> keep = subset_indices(10, 3)
    >>> len(keep), bool((keep.diff() > 0).all()), torch.equal(keep, subset_indices(10, 3)), subset_indices(10, None)
    (3, True, True, None)
    """
    if size is None or size >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:size].sort().values


def train_stream(config: TrainConfig, dist: DistInfo, device: torch.device) -> TensorStream | LoaderStream:
    """The training stream a config asks for (built-in data always goes through TensorStream)."""
    if is_builtin(config.data):
        images, labels = builtin_tensors(config.data, "train")
        keep = subset_indices(len(labels), config.train_subset)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        return TensorStream(images, labels, config, dist, device)
    return LoaderStream(config, dist, device)


def eval_dataset(data: str, split: str, image_size: int,
                 stats: tuple[Sequence[float], Sequence[float]] | None = None) -> torch.utils.data.Dataset:
    """Un-augmented, normalised (image, label) pairs of a split: ``val`` or ``train``; ``stats``
    (mean, std) replace the data's own normalisation (a Hugging Face folder's processor)."""
    mean, std = stats if stats is not None else normalization(data)
    if is_builtin(data):
        images, labels = builtin_tensors(data, split)
        x = images.float().div(255)
        if x.shape[-1] != image_size:
            x = torch.nn.functional.interpolate(x, size=image_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return torch.utils.data.TensorDataset(x, labels)
    return image_folder(data, split, eval_transform(image_size, mean=mean, std=std))


def eval_loader(
    data: str,
    split: str,
    image_size: int,
    *,
    batch_size: int = 256,
    workers: int = 0,
    max_samples: int | None = None,
    shard: DistInfo | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over :func:`eval_dataset` in a fixed order.

    ``max_samples`` keeps a fixed random subset; ``shard`` keeps every ``world_size``-th sample
    starting at ``rank`` (no padding, so the shards together hold each sample once).
    """
    dataset = eval_dataset(data, split, image_size)
    indices = list(range(len(dataset)))
    if max_samples is not None and max_samples < len(dataset):
        generator = torch.Generator().manual_seed(0)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:max_samples].tolist())
    if shard is not None and shard.world_size > 1:
        indices = indices[shard.rank :: shard.world_size]
    if len(indices) < len(dataset):
        dataset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
