"""Image folders as batches of normalised tensors, with unreadable files skipped and counted.

:func:`open_images` is the one door; the pieces behind it, one job each (every public name is
importable from here too):

* :mod:`.folders`: which files (:func:`list_images`, recursive, a seeded subset);
* :mod:`.transforms`: pixels to tensors (:func:`load_image` / :func:`to_rgb`, :func:`eval_transform`,
  and its tensor twin :func:`resize_center_crop` + :func:`normalize_batch`);
* :mod:`.skipping`: unreadable files skipped and counted (:class:`ImageFiles`, :class:`SkippingLoader`);
* :mod:`.tensor_decode`: the CUDA path (:class:`TensorDecodeLoader`).

Two paths give the same tensors up to resampling differences:

* the CPU path: PIL decode in DataLoader workers, then the ImageNet evaluation transform
  (:func:`eval_transform`: resize the shorter side to ``resize`` (bilinear, antialiased), centre
  crop ``image_size``, scale to [0, 1], subtract the mean and divide by the std per channel);
* the tensor path (:class:`TensorDecodeLoader`), meant for CUDA: file bytes are read by threads,
  JPEGs are decoded in batches by ``torchvision.io.decode_jpeg(..., device=device)`` and resized
  and cropped on that device by :func:`resize_center_crop`, the same maths on tensors.

Folders are searched recursively (flat, or class sub-folders as ImageNet val; symlinked folders
are followed, as torchvision's ``ImageFolder`` does, and a symlink back to a folder above is not),
files with other extensions are ignored, and a corrupt image is skipped with one warning and
counted (``strict=True`` fails instead). ``builtin:NAME`` opens a built-in demo data set.

16-bit images (PNG/TIFF grayscale, PIL modes ``I;16``, ``I;16B``, ``I``) are scaled by 65535,
not clipped: the PIL path reduces them to 8 bits per channel (``round(v / 257)``, the 8-bit copy
of the image), the tensor path keeps them in float (``v / 257`` in 0..255 units, 16-bit RGB PNGs
too), so both give the 8-bit copy's tensors within 1/255. Grayscale becomes 3 equal channels.
An image whose scale cannot be known (32-bit integers outside 0..65535, floats outside [0, 1])
is refused as unreadable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from collapse_probe.data.builtin import builtin_dataset, builtin_info, is_builtin
from collapse_probe.data.folders import IMAGE_EXTENSIONS, class_labels, list_images
from collapse_probe.data.skipping import (
    BuiltinItems,
    ImageFiles,
    SkippingItems,
    SkippingLoader,
    collate_skipping,
    describe_error,
)
from collapse_probe.data.subset import seeded_subset
from collapse_probe.data.tensor_decode import TensorDecodeLoader
from collapse_probe.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIXTEEN_BIT_MODES,
    default_resize,
    eval_transform,
    load_image,
    normalize_batch,
    resize_center_crop,
    sixteen_bit_values,
    to_rgb,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SIXTEEN_BIT_MODES",
    "BuiltinItems",
    "ImageFiles",
    "SkippingItems",
    "SkippingLoader",
    "TensorDecodeLoader",
    "collate_skipping",
    "default_resize",
    "describe_error",
    "eval_transform",
    "list_images",
    "load_image",
    "normalize_batch",
    "open_images",
    "resize_center_crop",
    "sixteen_bit_values",
    "to_rgb",
]

_BuiltinItems = BuiltinItems  # the name collapse_probe.data.views imports


def open_images(
    data: str | Path,
    *,
    image_size: int = 224,
    resize: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    max_samples: int | None = None,
    strict: bool = False,
    device: str | torch.device | None = None,
    gpu_decode: bool | None = None,
    transform: Any = None,
    labels: bool = False,
) -> SkippingLoader:
    """Open an image folder or ``builtin:NAME`` as batches of normalised ``(B, 3, S, S)`` tensors.

    ``gpu_decode`` (default: when ``device`` is CUDA and ``data`` is a folder) uses
    :class:`TensorDecodeLoader`; otherwise PIL in ``workers`` DataLoader processes. Built-in data
    sets use their ``val`` split. ``transform`` (PIL RGB image -> ``(3, H, W)`` tensor, e.g. a
    Hugging Face image processor) replaces the evaluation transform, ``image_size`` and
    ``resize``, and always runs on the PIL path. ``labels=True`` yields ``(images, labels)``: a
    built-in set's labels, or a folder's class sub-folder (sorted by name; the loader's
    ``classes`` lists them), for per-class statistics; it takes the PIL path too.

    >>> loader = open_images("builtin:digits", image_size=16, batch_size=100, max_samples=200)
    >>> [tuple(x.shape) for x in loader], loader.n_skipped
    ([(100, 3, 16, 16), (100, 3, 16, 16)], 0)
    """
    given = transform
    transform = given or eval_transform(image_size, resize)
    if is_builtin(str(data)):
        # built-in images are small and centred: resize whole (no crop), normalise by their own
        # statistics, as the trainer's evaluation does
        info = builtin_info(str(data))
        transform = given or eval_transform(image_size, resize or image_size, mean=info.mean, std=info.std)
        dataset: torch.utils.data.Dataset = BuiltinItems(builtin_dataset(str(data), split="val", transform=transform),
                                                         labels=labels)
        classes = [str(k) for k in range(info.num_classes)] if labels else None
        keep = seeded_subset(len(dataset), max_samples)  # the same seeded subset as a folder's, not the first N
        if keep is not None:
            dataset = torch.utils.data.Subset(dataset, keep)
    else:
        files = list_images(data, max_samples=max_samples)
        cuda = device is not None and torch.device(device).type == "cuda"
        file_labels, classes = class_labels(data, files) if labels else (None, None)
        if given is None and not labels and (gpu_decode if gpu_decode is not None else cuda):
            loader = TensorDecodeLoader(files, batch_size=batch_size, image_size=image_size, resize=resize,
                                        device=device or "cuda", threads=max(workers, 4))
            return SkippingLoader(loader, strict=strict, n_images=len(files))
        dataset = ImageFiles(files, transform, file_labels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skipping,
        pin_memory=device is not None and torch.device(device).type == "cuda", persistent_workers=False,
    )
    opened = SkippingLoader(loader, strict=strict, n_images=len(dataset))
    opened.classes = classes
    return opened
