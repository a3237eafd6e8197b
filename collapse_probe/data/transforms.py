"""Pixels to tensors: 8-bit RGB from any PIL image, the ImageNet evaluation transform, its tensor twin.

* :func:`eval_transform` (the PIL path): resize the shorter side to ``resize`` (bilinear,
  antialiased), centre crop ``image_size``, scale to [0, 1], subtract the mean and divide by the
  std per channel;
* :func:`resize_center_crop` and :func:`normalize_batch` (the tensor path, on any device): the
  same maths on tensors.

16-bit images (PNG/TIFF grayscale, PIL modes ``I;16``, ``I;16B``, ``I``) are scaled by 65535,
not clipped: :func:`to_rgb` reduces them to 8 bits per channel (``round(v / 257)``, the 8-bit
copy of the image). Grayscale becomes 3 equal channels. An image whose scale cannot be known
(32-bit integers outside 0..65535, floats outside [0, 1]) is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from collapse_probe.errors import CollapseProbeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def default_resize(image_size: int) -> int:
    """The ImageNet evaluation ratio 256/224 applied to ``image_size``.

    >>> default_resize(224), default_resize(32)
    (256, 36)
    """
    return int(image_size * 256 / 224)


def eval_transform(image_size: int = 224, resize: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Any:
    """PIL image -> (3, image_size, image_size) float tensor: resize, centre crop, normalise.

    >>> eval_transform(32)(Image.new("RGB", (50, 40))).shape
    torch.Size([3, 32, 32])
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize or default_resize(image_size), interpolation=transforms.InterpolationMode.BILINEAR,
                          antialias=True),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def sixteen_bit_values(image: Image.Image) -> np.ndarray | None:
    """A 16-bit or 32-bit integer image's values as a native uint16 (H, W) array; None for other modes.

    Raises :class:`CollapseProbeError` when a mode ``I`` image holds values outside 0..65535
    (its scale is unknown).
    """
    if image.mode not in SIXTEEN_BIT_MODES:
        return None
    values = np.asarray(image)
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise CollapseProbeError(f"32-bit integer image with values {values.min()}..{values.max()} outside "
                                 "0..65535: its scale is unknown; convert it to 8 or 16 bits")
    return values.astype(np.uint16)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling 16-bit (``I;16*``, ``I``) and float (``F``) images by their range.

    PIL's own ``convert("RGB")`` clips 16-bit values at 255 (mid-grey becomes white); here 16-bit
    ``v`` becomes ``round(v / 257)``, float ``v`` in [0, 1] becomes ``round(255 v)``.

    >>> gray16 = Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16))
    >>> gray16.mode, to_rgb(gray16).getpixel((0, 0))
    ('I;16', (128, 128, 128))
    """
    values = sixteen_bit_values(image)
    if values is None and image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
            raise CollapseProbeError("float image with values outside [0, 1]: its scale is unknown; "
                                     "convert it to 8 or 16 bits")
        values = values * 65535.0
    if values is None:
        return image.convert("RGB")
    eight = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    return Image.fromarray(eight).convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit RGB (see :func:`to_rgb`); the loader of every PIL path."""
    with Image.open(path) as image:
        return to_rgb(image)


def resize_center_crop(image: torch.Tensor, resize: int, image_size: int) -> torch.Tensor:
    """(3, H, W) uint8 or float on any device -> (3, image_size, image_size) of the same dtype: the
    eval transform's geometry (shorter side to ``resize``, bilinear with antialiasing, centre crop).

    >>> resize_center_crop(torch.zeros(3, 40, 50, dtype=torch.uint8), 36, 32).shape
    torch.Size([3, 32, 32])
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    image = F.resize(image, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(image, [image_size, image_size])


def normalize_batch(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(B, 3, H, W) in 0..255 units (uint8, or float) -> float32 ``(x / 255 - mean) / std`` per channel."""
    # non_blocking: a blocking host-to-device copy would sync the GPU on every batch
    mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(images.device, non_blocking=True)
    std_t = torch.tensor(std).view(1, -1, 1, 1).to(images.device, non_blocking=True)
    return (images.float() / 255.0 - mean_t) / std_t
