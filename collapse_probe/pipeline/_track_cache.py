"""One decode for every checkpoint: the sample's images decoded, resized and cropped once, kept as uint8.

``spectrum`` turns an image into a model input in two steps (:func:`collapse_probe.pipeline.data.open_data`):
a *geometry* that ends in 8-bit pixels (PIL's bilinear resize and centre crop, or a Hugging Face
image processor's own resize and crop) and a *normalisation* ``(x / 255 - mean) / std`` per
channel (ImageNet's, a built-in set's, or the processor's rescale and normalisation). Only the
normalisation can differ between checkpoints that share the geometry, so ``track`` decodes each
geometry once into an :class:`ImageCache` (in memory when it fits the budget, else one file of
uint8 tensors in ``OUT/track/``, reused by the next run) and normalises each batch from it per
checkpoint, by the same float32 operations as torchvision's ``ToTensor`` + ``Normalize`` (or the
processor itself with its resize and crop off). Batches keep the boundaries of ``spectrum``'s
loader (an unreadable image drops out of its batch), so the jackknife groups agree too.

:func:`same_as_spectrum` checks the first images against the loader ``spectrum`` would open for
that checkpoint, bit for bit, once per geometry and normalisation; a processor whose steps cannot
be separated so is decoded per checkpoint instead (the caller's fallback), never approximated.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapse_probe._utils.files import atomic_path
from collapse_probe.data.builtin import builtin_info, is_builtin
from collapse_probe.data.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform, open_images
from collapse_probe.data.text import is_text_data
from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.hf import processor_pixel_stats
from collapse_probe.models.loading import LoadedEncoder
from collapse_probe.pipeline.data import DataConfig, checked_image_size, open_data

MAGIC = b"CPIMGv1\n"
Normalise = Callable[[torch.Tensor], torch.Tensor]


class _ToUint8:
    """PIL image -> (3, H, W) uint8 tensor (what ``ToTensor`` sees before it divides by 255)."""

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image)


class _ProcessorGeometry:
    """PIL image -> the processor's resized and cropped pixels, rescale and normalisation off."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        pixels = self.processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
        return _as_uint8(torch.as_tensor(pixels))


class NotUint8(CollapseProbeError):
    """A geometry whose output is not 8-bit pixels: it cannot be cached as uint8."""


def _as_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels as uint8; anything else as float32, which :func:`build_cache` refuses (raising
    here, in a DataLoader worker, would count the image as unreadable)."""
    if pixels.dtype == torch.uint8:
        return pixels
    if pixels.is_floating_point() and bool(((pixels == pixels.round()) & (pixels >= 0) & (pixels <= 255)).all()):
        return pixels.to(torch.uint8)
    return pixels.to(torch.float32)


@dataclass(frozen=True)
class Plan:
    """How one checkpoint's images are made: a geometry (``key`` names it; ``transform`` is PIL ->
    uint8) and a normalisation (``norm_key``; ``normalise`` is uint8 batch -> model input)."""

    key: str
    transform: Any
    norm_key: str
    normalise: Normalise = field(compare=False)


def eval_normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalise:
    """uint8 ``(B, 3, H, W)`` -> float32 ``(x / 255 - mean) / std``: torchvision's ``ToTensor``
    (``.div(255)``) and ``Normalize`` (``sub_`` then ``div_``), the same float32 operations."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).div(255).sub_(mean_t).div_(std_t)

    return normalise


def processor_normalise(processor: Any) -> Normalise:
    """uint8 batch -> the processor's output with its resize and crop off (its rescale and normalisation)."""
    def normalise(images: torch.Tensor) -> torch.Tensor:
        arrays = [image.permute(1, 2, 0).numpy() for image in images]  # HWC uint8, as after its own resize
        out = processor(images=arrays, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)

    return normalise


def plan_for(path: Path, item: LoadedEncoder, d: DataConfig) -> Plan | None:
    """The geometry and normalisation :func:`open_data` uses for this checkpoint; None where the
    input is not an image tensor built so (text, a text model, labelled batches: probed as
    ``spectrum`` does, decoding per checkpoint)."""
    processor = item.image_processor
    if is_text_data(d.data) or (item.tokenizer is not None and processor is None) or getattr(d, "labels", False):
        return None  # (images, labels) batches for per-class statistics: decoded per checkpoint, as spectrum
    if processor is not None and d.image_size is None and d.resize is None:
        config = json.dumps(processor.to_dict(), sort_keys=True, default=repr)
        digest = hashlib.sha256(f"{type(processor).__name__}{config}".encode()).hexdigest()[:16]
        return Plan(f"processor-{digest}", _ProcessorGeometry(processor), f"processor-{digest}",
                    processor_normalise(processor))
    size = checked_image_size([path], [item], d)
    if processor is not None:
        mean, std = processor_pixel_stats(processor)
    elif is_builtin(d.data):
        info = builtin_info(d.data)
        mean, std = info.mean, info.std
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    resize = (d.resize or size) if is_builtin(d.data) else d.resize  # open_images: built-in sets are not cropped
    steps = eval_transform(size, resize, mean=mean, std=std).transforms
    from torchvision import transforms

    if [type(t) for t in steps[-2:]] != [transforms.ToTensor, transforms.Normalize]:
        return None  # the evaluation transform changed shape: nothing to split
    geometry = transforms.Compose([*steps[:-2], _ToUint8()])
    return Plan(f"eval-{size}-{resize}", geometry, f"eval-{size}-{resize}-{mean}-{std}", eval_normalise(mean, std))


@dataclass
class ImageCache:
    """The decoded sample: ``images`` (N, 3, H, W) uint8 (readable images, in order), the sizes of
    ``spectrum``'s batches, the images counted unreadable, and where it lives."""

    images: torch.Tensor
    batch_sizes: list[int]
    n_images: int
    skipped: list[str]
    where: str
    decode_seconds: float
    reused: bool = False

    def batches(self, normalise: Normalise) -> CachedBatches:
        return CachedBatches(self, normalise)


class CachedBatches:
    """``spectrum``'s batches rebuilt from an :class:`ImageCache`: a loader with ``n_skipped``."""

    def __init__(self, cache: ImageCache, normalise: Normalise):
        self.cache, self.normalise = cache, normalise
        self.n_images = cache.n_images
        self.n_skipped = len(cache.skipped)
        self.skipped = list(cache.skipped)

    def __len__(self) -> int:
        return len(self.cache.batch_sizes)

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = 0
        for size in self.cache.batch_sizes:
            yield self.normalise(self.cache.images[start:start + size])
            start += size


def cache_key(plan: Plan, d: DataConfig, data_id: str) -> str:
    """What the cached pixels depend on: geometry, sample, batch boundaries, strictness."""
    text = json.dumps([plan.key, data_id, d.data, d.max_samples, d.batch_size, d.strict])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def build_cache(plan: Plan, d: DataConfig, *, key: str, budget_bytes: int, folder: Path | None,
                log: Callable[[str], None] = lambda _: None) -> ImageCache:
    """Decode the sample once by ``plan``'s geometry (the loader ``spectrum`` uses, PIL path).

    Kept in memory when ``N x 3 x H x W`` bytes fit ``budget_bytes`` (or there is no ``folder``);
    else streamed, one batch at a time, to ``folder/images-KEY.u8`` and memory-mapped. A file
    from an earlier run with the same key is reused without decoding. Raises :class:`NotUint8`
    for a geometry that does not give 8-bit pixels.
    """
    file = None if folder is None else folder / f"images-{key}.u8"
    if file is not None and file.is_file():
        cached = read_cache_file(file, key)
        if cached is not None:
            log(f"images: reusing {file} ({cached.images.shape[0]} images decoded by an earlier run)")
            return cached
    start = time.perf_counter()
    loader = open_images(d.data, transform=plan.transform, batch_size=d.batch_size, workers=d.workers,
                         max_samples=d.max_samples, strict=d.strict)
    batches = iter(loader)
    first = next(batches, None)
    shape = tuple(first.shape[1:]) if first is not None else (3, 1, 1)
    if first is not None and first.dtype != torch.uint8:
        raise NotUint8(f"{plan.key}: the resize and crop do not give 8-bit pixels ({first.dtype})")
    stream = itertools.chain([first] if first is not None else [], batches)
    if file is not None and loader.n_images * int(np.prod(shape)) > budget_bytes:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as temporary, open(temporary, "wb") as handle:
            sizes = [_write_batch(handle, batch) for batch in stream]
            seconds = time.perf_counter() - start
            _write_trailer(handle, {"key": key, "shape": list(shape), "batch_sizes": sizes,
                                    "n_images": loader.n_images, "skipped": loader.skipped, "decode_seconds": seconds})
        log(f"images: {sum(sizes)} decoded once into {file} ({seconds:.1f} s; over the memory budget)")
        return replace(read_cache_file(file, key), reused=False)
    chunks = list(stream)
    seconds = time.perf_counter() - start
    images = torch.cat(chunks) if chunks else torch.zeros((0, *shape), dtype=torch.uint8)
    log(f"images: {images.shape[0]} decoded once into memory ({images.numel() / 2**20:.0f} MiB, {seconds:.1f} s)")
    return ImageCache(images, [int(c.shape[0]) for c in chunks], loader.n_images, list(loader.skipped), "memory",
                      seconds)


def _write_batch(handle: Any, batch: torch.Tensor) -> int:
    handle.write(batch.contiguous().numpy().tobytes())
    return int(batch.shape[0])


def _write_trailer(handle: Any, header: dict[str, Any]) -> None:
    """The header goes after the pixels (its batch sizes are known only then): JSON, its length, MAGIC."""
    text = json.dumps(header).encode()
    handle.write(text)
    handle.write(len(text).to_bytes(8, "little"))
    handle.write(MAGIC)


def read_cache_file(file: Path, key: str) -> ImageCache | None:
    """A cache file memory-mapped, or None when it is damaged or of another key."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            handle.seek(size - 16)
            length, magic = int.from_bytes(handle.read(8), "little"), handle.read(8)
            if magic != MAGIC or length > size - 16:
                return None
            handle.seek(size - 16 - length)
            header = json.loads(handle.read(length))
        shape = (sum(header["batch_sizes"]), *header["shape"])
        if header["key"] != key or int(np.prod(shape)) != size - 16 - length:
            return None
    except (OSError, ValueError, KeyError):
        return None
    pixels = np.memmap(file, dtype=np.uint8, mode="c", shape=shape) if shape[0] else np.zeros(shape, np.uint8)
    return ImageCache(torch.from_numpy(pixels), header["batch_sizes"], header["n_images"], header["skipped"],
                      str(file), header["decode_seconds"], reused=True)


def same_as_spectrum(path: Path, item: LoadedEncoder, d: DataConfig, cache: ImageCache, plan: Plan,
                     n_check: int = 4) -> bool:
    """Whether the first ``n_check`` inputs from the cache equal, bit for bit, those of the
    loader ``spectrum`` opens for this checkpoint (:func:`open_data`, CPU decode, one process)."""
    reference, _ = open_data([path], [item], replace(d, workers=0, batch_size=n_check), torch.device("cpu"))
    try:
        expected = next(iter(reference))
    except StopIteration:
        return cache.images.shape[0] == 0
    ours = plan.normalise(cache.images[: expected.shape[0]])
    return ours.dtype == expected.dtype and ours.shape == expected.shape and bool(torch.equal(ours, expected))


def cache_budget_bytes(mebibytes: float) -> int:
    """``--cache-memory`` MiB as bytes."""
    return int(mebibytes * 2**20)
