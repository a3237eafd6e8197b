"""Image folders as batches of normalised tensors, with unreadable files skipped and counted.

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

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from collapse_probe.data.builtin import builtin_dataset, builtin_info, is_builtin
from collapse_probe.errors import CollapseProbeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def describe_error(error: BaseException) -> str:
    """``"Type: first line of the message"``: user-facing errors stay on one line.

    >>> describe_error(ValueError("bad header\\nmore detail"))
    'ValueError: bad header'
    """
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def default_resize(image_size: int) -> int:
    """The ImageNet evaluation ratio 256/224 applied to ``image_size``.

    >>> default_resize(224), default_resize(32)
    (256, 36)
    """
    return int(image_size * 256 / 224)


def _walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, following symlinked folders (as torchvision's ``ImageFolder``),
    except a link to a folder already on the current path (a loop)."""

    def identity(path: str) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino

    def walk(folder: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable folder: nothing to list there
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks; a broken link is neither dir nor file
            except OSError:
                continue
            if is_dir:
                key = identity(entry.path)
                if key not in ancestors:
                    yield from walk(entry.path, ancestors | {key})
            else:
                yield Path(entry.path)

    yield from walk(str(root), frozenset({identity(str(root))}))


def list_images(root: str | Path, *, max_samples: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), or a seeded random subset of ``max_samples``.

    The subset is drawn uniformly (not the first files), so class sub-folders stay balanced.
    """
    root = Path(root)
    if not root.exists():
        raise CollapseProbeError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise CollapseProbeError(f"--data {str(root)!r} is not a folder (or builtin:NAME)")
    files = sorted(p for p in _walk_files(root) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise CollapseProbeError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
    if max_samples is not None and max_samples < len(files):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(files), generator=generator)[:max_samples].sort().values
        files = [files[i] for i in keep.tolist()]
    return files


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


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


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


class ImageFiles(torch.utils.data.Dataset):
    """Files -> ``(tensor or None, error message or None)``; a failed decode is not raised here."""

    def __init__(self, files: Sequence[Path], transform: Any):
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        path = self.files[index]
        try:
            return self.transform(load_image(path)), None
        except Exception as error:  # noqa: BLE001 - any decode failure is "unreadable"
            return None, f"{path}: {describe_error(error)}"


class _BuiltinItems(torch.utils.data.Dataset):
    """A built-in data set as ``(tensor, None)`` items, like :class:`ImageFiles`."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, None]:
        return self.dataset[index][0], None


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
) -> SkippingLoader:
    """Open an image folder or ``builtin:NAME`` as batches of normalised ``(B, 3, S, S)`` tensors.

    ``gpu_decode`` (default: when ``device`` is CUDA and ``data`` is a folder) uses
    :class:`TensorDecodeLoader`; otherwise PIL in ``workers`` DataLoader processes. Built-in data
    sets use their ``val`` split. ``transform`` (PIL RGB image -> ``(3, H, W)`` tensor, e.g. a
    Hugging Face image processor) replaces the evaluation transform, ``image_size`` and
    ``resize``, and always runs on the PIL path.

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
        dataset: torch.utils.data.Dataset = _BuiltinItems(builtin_dataset(str(data), split="val", transform=transform))
        if max_samples is not None and max_samples < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(max_samples))
    else:
        files = list_images(data, max_samples=max_samples)
        cuda = device is not None and torch.device(device).type == "cuda"
        if given is None and (gpu_decode if gpu_decode is not None else cuda):
            loader = TensorDecodeLoader(files, batch_size=batch_size, image_size=image_size, resize=resize,
                                        device=device or "cuda", threads=max(workers, 4))
            return SkippingLoader(loader, strict=strict, n_images=len(files))
        dataset = ImageFiles(files, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skipping,
        pin_memory=device is not None and torch.device(device).type == "cuda", persistent_workers=False,
    )
    return SkippingLoader(loader, strict=strict, n_images=len(dataset))


# ----------------------------------------------------------------------------- tensor / GPU path


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


def _read(path: Path) -> tuple[Path, torch.Tensor | None, str | None]:
    from torchvision.io import read_file

    try:
        return path, read_file(str(path)), None
    except Exception as error:  # noqa: BLE001
        return path, None, f"{path}: {describe_error(error)}"


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """File bytes -> (3, H, W) on ``device`` in 0..255 units: uint8 for 8-bit images, float32
    ``v / 257`` for 16-bit ones (torchvision decodes 16-bit PNG as uint16). Formats torchvision
    cannot decode (TIFF, BMP, PPM...) go through PIL and :func:`to_rgb`."""
    import io

    from torchvision.io import ImageReadMode, decode_image

    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as pil:
                rgb = np.asarray(to_rgb(pil))
        except Exception:  # noqa: BLE001 - report torchvision's error: PIL cannot read it either
            raise error from None
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    if image.dtype == torch.uint16:
        image = image.float().div_(257.0)
    elif image.dtype != torch.uint8:
        raise CollapseProbeError(f"decoded image of dtype {image.dtype}: only 8- and 16-bit images are supported")
    return image.to(device)


class TensorDecodeLoader:
    """Batches of ``(images, errors)`` decoded as tensors; on CUDA JPEGs decode on the GPU.

    Threads read file bytes one batch ahead; JPEGs (``FF D8`` magic) go to one batched
    ``decode_jpeg(list, device=device)`` call, other formats and any JPEG the batched call rejects
    are decoded one by one on the CPU (a corrupt file becomes an error entry, not an exception).
    """

    def __init__(self, files: Sequence[Path], *, batch_size: int, image_size: int, resize: int | None,
                 device: str | torch.device, threads: int = 4):
        self.files = list(files)
        self.batch_size = batch_size
        self.image_size = image_size
        self.resize = resize or default_resize(image_size)
        self.device = torch.device(device)
        self.threads = threads

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    def _decode(self, items: list[tuple[Path, torch.Tensor | None, str | None]]) -> tuple[torch.Tensor | None, list[str]]:
        from torchvision.io import ImageReadMode, decode_jpeg

        errors = [e for _, d, e in items if d is None]
        readable = [(p, d) for p, d, _ in items if d is not None]
        jpegs = [(p, d) for p, d in readable if d.numel() > 2 and d[0] == 0xFF and d[1] == 0xD8]
        decoded: list[torch.Tensor] = []
        try:
            decoded = list(decode_jpeg([d for _, d in jpegs], mode=ImageReadMode.RGB, device=self.device)) if jpegs else []
            rest = [(p, d) for p, d in readable if not any(p is q for q, _ in jpegs)]
        except RuntimeError:  # one bad JPEG fails the batched call: decode each one alone
            rest = readable
        for path, data in rest:
            try:
                decoded.append(_decode_one(data, self.device))
            except Exception as error:  # noqa: BLE001
                errors.append(f"{path}: {describe_error(error)}")
        if not decoded:
            return None, errors
        # resample in float (0..255 units), unrounded: 8-bit (uint8) and 16-bit (float) images can
        # share a batch, and a 16-bit image gives its 8-bit copy's tensor within half a grey level
        batch = torch.stack([resize_center_crop(x.float(), self.resize, self.image_size) for x in decoded])
        return normalize_batch(batch), errors

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, list[str]]]:
        chunks = [self.files[i:i + self.batch_size] for i in range(0, len(self.files), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending = list(pool.map(_read, chunks[0])) if chunks else []
            for index in range(len(chunks)):
                ahead = pool.map(_read, chunks[index + 1]) if index + 1 < len(chunks) else iter(())
                yield self._decode(pending)
                pending = list(ahead)
