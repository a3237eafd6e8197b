"""The tensor path, meant for CUDA: file bytes read by threads, JPEGs decoded in batches on the device.

JPEGs are decoded by ``torchvision.io.decode_jpeg(..., device=device)`` and resized and cropped
there by :func:`~collapse_probe.data.transforms.resize_center_crop`, the PIL path's maths on
tensors. 16-bit images stay in float (``v / 257`` in 0..255 units, 16-bit RGB PNGs too), so the
tensors agree with the PIL path's 8-bit copy within 1/255.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from collapse_probe.data.skipping import describe_error
from collapse_probe.data.transforms import (
    default_resize,
    normalize_batch,
    resize_center_crop,
    to_rgb,
)
from collapse_probe.errors import CollapseProbeError


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
