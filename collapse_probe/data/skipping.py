"""Unreadable images skipped and counted: data sets of ``(item, error)`` pairs and the loader that counts.

A corrupt image is skipped with one warning and counted (``strict=True`` fails instead); when no
image at all could be read the pass ends with one :class:`CollapseProbeError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from collapse_probe.data.transforms import load_image
from collapse_probe.errors import CollapseProbeError


def describe_error(error: BaseException) -> str:
    """``"Type: first line of the message"``: user-facing errors stay on one line.

    >>> describe_error(ValueError("bad header\\nmore detail"))
    'ValueError: bad header'
    """
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class ImageFiles(torch.utils.data.Dataset):
    """Files -> ``(tensor or None, error message or None)``; a failed decode is not raised here."""

    def __init__(self, files: Sequence[Path], transform: Any, labels: Sequence[int] | None = None):
        self.files = list(files)
        self.transform = transform
        self.labels = None if labels is None else list(labels)  # then items are (image, label)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        path = self.files[index]
        try:
            image = self.transform(load_image(path))
            return (image if self.labels is None else (image, self.labels[index])), None
        except Exception as error:  # noqa: BLE001 - any decode failure is "unreadable"
            return None, f"{path}: {describe_error(error)}"


class BuiltinItems(torch.utils.data.Dataset):
    """A built-in data set as ``(tensor, None)`` items, like :class:`ImageFiles`."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: bool = False):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, None]:
        image, label = self.dataset[index]
        return ((image, int(label)) if self.labels else image), None


class SkippingItems(torch.utils.data.Dataset):
    """Any data set's items as ``(item, None)``, or ``(None, "path: error")`` when loading one fails.

    Wraps a labelled data set (torchvision's ``ImageFolder``: ``item = (image, label)``) so that
    :class:`SkippingLoader` can skip and count its unreadable files as it does for :class:`ImageFiles`.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        samples = getattr(dataset, "samples", None)  # ImageFolder: [(path, label), ...]
        self.paths = [str(path) for path, _ in samples] if samples is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, str | None]:
        try:
            return self.dataset[index], None
        except Exception as error:  # noqa: BLE001 - any decode failure is "unreadable"
            where = self.paths[index] if self.paths is not None else f"item {index}"
            return None, f"{where}: {describe_error(error)}"


def collate_skipping(items: list[tuple[Any, str | None]]) -> tuple[Any, list[str]]:
    """Collate the readable items (images, or ``(image, label)`` pairs); return ``(batch or None, errors)``."""
    readable = [x for x, _ in items if x is not None]
    batch = torch.utils.data.default_collate(readable) if readable else None
    return batch, [e for _, e in items if e is not None]


class SkippingLoader:
    """Iterate ``(B, 3, H, W)`` tensors (or ``(images, labels)``) from a loader of ``(batch, errors)`` pairs.

    ``n_skipped`` counts unreadable images; the first one warns once, the rest are counted only.
    ``strict=True`` raises :class:`CollapseProbeError` on the first unreadable image instead. When
    no image at all could be read, the pass ends with a :class:`CollapseProbeError` saying so
    (``0 of N images could be read (first error: ...)``).
    """

    def __init__(self, loader: Any, *, strict: bool = False, n_images: int | None = None):
        self.loader = loader
        self.strict = strict
        self.n_images = n_images
        self.n_skipped = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        yielded = False
        for images, errors in self.loader:
            for error in errors:
                if self.strict:
                    raise CollapseProbeError(f"unreadable image {error} (drop --strict to skip such files)")
                if not self.skipped:
                    warnings.warn(f"skipping unreadable image {error}; further ones are counted in the report",
                                  stacklevel=2)
                self.skipped.append(error)
                self.n_skipped += 1
            if images is not None:
                yielded = True
                yield images
        if not yielded and self.skipped:
            total = self.n_images if self.n_images is not None else self.n_skipped
            raise CollapseProbeError(f"0 of {total} images could be read (first error: {self.skipped[0]})")
