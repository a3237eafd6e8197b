"""Built-in demo data sets that ship with a dependency: no download, ever.

``digits``: the 1,797 handwritten digits bundled with scikit-learn (8 x 8 greyscale, 10 classes,
UCI ML hand-written digits), served as RGB PIL images upsampled to 32 x 32 so that standard
torchvision transforms (crops, colour jitter, blur) apply. Splits are a fixed, seeded,
class-stratified 80/20 partition, so ``train`` and ``val`` never overlap.

Refer to one on the command line as ``--data builtin:digits``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from collapse_probe.errors import CollapseProbeError

BUILTIN_PREFIX = "builtin:"
SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class BuiltinInfo:
    """What a built-in data set is: its native image size, class count and normalisation."""

    name: str
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DIGITS = BuiltinInfo("digits", image_size=32, num_classes=10, mean=(0.307, 0.307, 0.307), std=(0.325, 0.325, 0.325))
BUILTINS: dict[str, BuiltinInfo] = {DIGITS.name: DIGITS}


def is_builtin(data: str) -> bool:
    """True when ``data`` names a built-in data set (``builtin:NAME``)."""
    return str(data).startswith(BUILTIN_PREFIX)


def builtin_info(data: str) -> BuiltinInfo:
    """The :class:`BuiltinInfo` for ``builtin:NAME`` or ``NAME``; a clear error for unknown names."""
    name = str(data).removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        raise CollapseProbeError(f"unknown built-in data set {name!r}; available: {', '.join('builtin:' + n for n in BUILTINS)}")
    return BUILTINS[name]


def _digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    if split == "all":
        return images, labels
    rng = np.random.default_rng(0)
    val_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        val_mask[rng.choice(members, size=len(members) // 5, replace=False)] = True
    keep = val_mask if split == "val" else ~val_mask
    return images[keep], labels[keep]


class BuiltinImageDataset(torch.utils.data.Dataset):
    """A built-in data set as (image, label) pairs; ``transform`` maps the PIL image."""

    def __init__(self, name: str, *, split: str = "train", transform: Callable[[Image.Image], Any] | None = None):
        self.info = builtin_info(name)
        if split not in SPLITS:
            raise CollapseProbeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.split = split
        self.images, self.labels = _digits_arrays(split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        size = self.info.image_size
        image = Image.fromarray(self.images[index], mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def builtin_dataset(
    data: str,
    *,
    split: str = "train",
    transform: Callable[[Image.Image], Any] | None = None,
) -> BuiltinImageDataset:
    """Open ``builtin:NAME`` (or ``NAME``) as a Dataset of ``(transform(PIL image), label)``.

    >>> ds = builtin_dataset("builtin:digits", split="val")
    >>> len(ds), ds[0][0].size, ds.info.num_classes
    (355, (32, 32), 10)
    """
    return BuiltinImageDataset(data, split=split, transform=transform)
