"""Image folders as batches of normalised tensors, with unreadable files skipped and counted.

Two paths give the same tensors up to resampling differences:

* the CPU path: PIL decode in DataLoader workers, then the ImageNet evaluation transform
  (:func:`eval_transform`: resize the shorter side to ``resize`` (bilinear, antialiased), centre
  crop ``image_size``, scale to [0, 1], subtract the mean and divide by the std per channel);
* the tensor path (:class:`TensorDecodeLoader`), meant for CUDA: file bytes are read by threads,
  JPEGs are decoded in batches by ``torchvision.io.decode_jpeg(..., device=device)`` and resized
  and cropped on that device by :func:`resize_center_crop`, the same maths on tensors.

Folders are searched recursively (flat, or class sub-folders as ImageNet val), files with other
extensions are ignored, and a corrupt image is skipped with one warning and counted
(``strict=True`` fails instead). ``builtin:NAME`` opens a built-in demo data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def list_images(root: str | Path, *, max_samples: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), or a seeded random subset of ``max_samples``.

    The subset is drawn uniformly (not the first files), so class sub-folders stay balanced.
    """
    root = Path(root)
    if not root.exists():
        raise CollapseProbeError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise CollapseProbeError(f"--data {str(root)!r} is not a folder (or builtin:NAME)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
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
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), None
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


def collate_skipping(items: list[tuple[torch.Tensor | None, str | None]]) -> tuple[torch.Tensor | None, list[str]]:
    """Stack the readable images; return ``(images or None, error messages)``."""
    images = [x for x, _ in items if x is not None]
    return (torch.stack(images) if images else None), [e for _, e in items if e is not None]


class SkippingLoader:
    """Iterate ``(B, 3, H, W)`` tensors from a loader of ``(images, errors)`` pairs.

    ``n_skipped`` counts unreadable images; the first one warns once, the rest are counted only.
    ``strict=True`` raises :class:`CollapseProbeError` on the first unreadable image instead.
    """

    def __init__(self, loader: Any, *, strict: bool = False, n_images: int | None = None):
        self.loader = loader
        self.strict = strict
        self.n_images = n_images
        self.n_skipped = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
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
                yield images


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
) -> SkippingLoader:
    """Open an image folder or ``builtin:NAME`` as batches of normalised ``(B, 3, S, S)`` tensors.

    ``gpu_decode`` (default: when ``device`` is CUDA and ``data`` is a folder) uses
    :class:`TensorDecodeLoader`; otherwise PIL in ``workers`` DataLoader processes. Built-in data
    sets use their ``val`` split.

    >>> loader = open_images("builtin:digits", image_size=16, batch_size=100, max_samples=200)
    >>> [tuple(x.shape) for x in loader], loader.n_skipped
    ([(100, 3, 16, 16), (100, 3, 16, 16)], 0)
    """
    transform = eval_transform(image_size, resize)
    if is_builtin(str(data)):
        # built-in images are small and centred: resize whole (no crop), normalise by their own
        # statistics, as the trainer's evaluation does
        info = builtin_info(str(data))
        transform = eval_transform(image_size, resize or image_size, mean=info.mean, std=info.std)
        dataset: torch.utils.data.Dataset = _BuiltinItems(builtin_dataset(str(data), split="val", transform=transform))
        if max_samples is not None and max_samples < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(max_samples))
    else:
        files = list_images(data, max_samples=max_samples)
        cuda = device is not None and torch.device(device).type == "cuda"
        if gpu_decode if gpu_decode is not None else cuda:
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
    """uint8 (3, H, W) on any device -> uint8 (3, image_size, image_size): the eval transform's
    geometry (shorter side to ``resize``, bilinear with antialiasing, centre crop) on tensors.

    >>> resize_center_crop(torch.zeros(3, 40, 50, dtype=torch.uint8), 36, 32).shape
    torch.Size([3, 32, 32])
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    image = F.resize(image, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(image, [image_size, image_size])


def normalize_batch(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, on the same device."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def _read(path: Path) -> tuple[Path, torch.Tensor | None, str | None]:
    from torchvision.io import read_file

    try:
        return path, read_file(str(path)), None
    except Exception as error:  # noqa: BLE001
        return path, None, f"{path}: {describe_error(error)}"


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(data, mode=ImageReadMode.RGB).to(device)


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
        batch = torch.stack([resize_center_crop(x, self.resize, self.image_size) for x in decoded])
        return normalize_batch(batch), errors

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, list[str]]]:
        chunks = [self.files[i:i + self.batch_size] for i in range(0, len(self.files), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending = list(pool.map(_read, chunks[0])) if chunks else []
            for index in range(len(chunks)):
                ahead = pool.map(_read, chunks[index + 1]) if index + 1 < len(chunks) else iter(())
                yield self._decode(pending)
                pending = list(ahead)
