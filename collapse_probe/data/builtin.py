"""Built-in demo data sets that ship with a dependency: no download, ever.

``digits``: the 1,797 handwritten digits bundled with scikit-learn (8 x 8 greyscale, 10 classes,
UCI ML hand-written digits), served as RGB PIL images upsampled to 32 x 32 so that standard
torchvision transforms (crops, colour jitter, blur) apply. Splits are a fixed, seeded,
class-stratified 80/20 partition, so ``train`` and ``val`` never overlap.

``fashion-mnist``: Fashion-MNIST (Xiao et al. 2017; 70,000 greyscale 28 x 28 images of 10 kinds of
clothing) as Debian's package ``dataset-fashion-mnist`` installs it, idx files under
``/usr/share/datasets/fashion-mnist`` (``$COLLAPSE_PROBE_FASHION_MNIST`` names another folder
holding the same four files, gzipped or not). ``train`` is the official 60,000-image training
set, ``val`` the official 10,000-image test set. Nothing is downloaded: when the files are absent
the error names the package to install.

Refer to one on the command line as ``--data builtin:digits`` or ``--data builtin:fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
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
# mean and std of the 60,000 training images' pixels in [0, 1], measured: 0.28604, 0.35302
FASHION_MNIST = BuiltinInfo("fashion-mnist", image_size=28, num_classes=10, mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353))
BUILTINS: dict[str, BuiltinInfo] = {info.name: info for info in (DIGITS, FASHION_MNIST)}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "COLLAPSE_PROBE_FASHION_MNIST"
_FASHION_FILES = {"train": "train", "val": "t10k"}
_IDX_MAGIC = {"images": 2051, "labels": 2049}


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


def fashion_mnist_dir() -> str:
    """The folder the Fashion-MNIST idx files are read from (``$COLLAPSE_PROBE_FASHION_MNIST`` or Debian's)."""
    return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def _read_idx(folder: str, stem: str, kind: str) -> np.ndarray:
    """One idx file as a uint8 array: images (N, 28, 28) or labels (N,); gzipped or plain."""
    ndim = 3 if kind == "images" else 1
    name = f"{stem}-{kind}-idx{ndim}-ubyte"
    for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
        if os.path.exists(path):
            break
    else:
        raise CollapseProbeError(
            f"builtin:fashion-mnist needs the Fashion-MNIST files in {folder} ({name}.gz is missing): "
            f"install Debian's package (apt-get install dataset-fashion-mnist) or set {FASHION_MNIST_ENV} "
            "to a folder holding the four idx files")
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise CollapseProbeError(f"cannot read {path}: {error}") from error
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _IDX_MAGIC[kind]:
        raise CollapseProbeError(f"{path} is not an idx {kind} file (wrong magic number)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise CollapseProbeError(f"{path} is truncated: its header says {shape}, it holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, for torch


def _fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = fashion_mnist_dir()
    if split == "all":
        parts = [_fashion_mnist_arrays(s) for s in ("train", "val")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    stem = _FASHION_FILES[split]
    images, labels = _read_idx(folder, stem, "images"), _read_idx(folder, stem, "labels")
    if len(images) != len(labels):
        raise CollapseProbeError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {folder}")
    return images, labels.astype(np.int64)


_ARRAYS: dict[str, Callable[[str], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits_arrays, "fashion-mnist": _fashion_mnist_arrays}


def require_builtin(data: str) -> BuiltinInfo:
    """The :class:`BuiltinInfo` of ``data`` once its files are known to be readable here; else the
    one-line error that names what to install."""
    info = builtin_info(data)
    _ARRAYS[info.name]("val")
    return info


def builtin_available(data: str) -> bool:
    """True when the files of built-in data set ``data`` can be read on this machine."""
    try:
        require_builtin(data)
    except CollapseProbeError:
        return False
    return True


class BuiltinImageDataset(torch.utils.data.Dataset):
    """A built-in data set as (image, label) pairs; ``transform`` maps the PIL image."""

    def __init__(self, name: str, *, split: str = "train", transform: Callable[[Image.Image], Any] | None = None):
        self.info = builtin_info(name)
        if split not in SPLITS:
            raise CollapseProbeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.split = split
        self.images, self.labels = _ARRAYS[self.info.name](split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        size = self.info.image_size
        image = Image.fromarray(self.images[index], mode="L")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        image = image.convert("RGB")
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

    ``builtin:fashion-mnist`` gives 60,000 ``train`` and 10,000 ``val`` images of 28 x 28.
    """
    return BuiltinImageDataset(data, split=split, transform=transform)
