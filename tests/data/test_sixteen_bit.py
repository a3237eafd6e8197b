"""16-bit images are scaled by 65535 on both paths: same tensors as their 8-bit copy within 1/255."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from collapse_probe.data.images import (
    IMAGENET_STD,
    TensorDecodeLoader,
    list_images,
    open_images,
    to_rgb,
)
from collapse_probe.errors import CollapseProbeError

SIZE, RESIZE = 24, 28
# 1/255 of the [0, 1] pixel range, in normalised units (divided by the smallest channel std)
ONE_LEVEL = 1 / 255 / min(IMAGENET_STD)


def _smooth16(rng: np.random.Generator, channels: int, width: int = 50, height: int = 40) -> np.ndarray:
    """A smooth random uint16 (H, W) or (H, W, C) image spanning most of 0..65535."""
    planes = []
    for _ in range(channels):
        small = Image.fromarray(rng.uniform(2000, 63000, size=(5, 5)).astype(np.float32))
        planes.append(np.asarray(small.resize((width, height), Image.BILINEAR)))
    values = np.clip(np.rint(np.stack(planes, -1)), 0, 65535).astype(np.uint16)
    return values[..., 0] if channels == 1 else values


def _eight_bit_copy(values: np.ndarray) -> np.ndarray:
    return np.floor(values / 257.0 + 0.5).astype(np.uint8)


def _png16_rgb(path, values: np.ndarray) -> None:
    """Write a 16-bit RGB PNG by hand (PIL cannot write 48-bit colour)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def pairs(tmp_path):
    """16-bit images (PNG I;16, TIFF I;16B, 48-bit RGB PNG) next to their 8-bit copies."""
    rng = np.random.default_rng(0)
    gray = _smooth16(rng, 1)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    Image.fromarray(gray.astype(">u2")).save(tmp_path / "gray16b.tif")
    Image.fromarray(_eight_bit_copy(gray)).save(tmp_path / "gray8.png")
    rgb = _smooth16(rng, 3)
    _png16_rgb(tmp_path / "rgb16.png", rgb)
    Image.fromarray(_eight_bit_copy(rgb)).save(tmp_path / "rgb8.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    assert Image.open(tmp_path / "gray16b.tif").mode == "I;16B"
    return tmp_path


def _by_name(root, tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return {path.name: x for path, x in zip(list_images(root), tensors, strict=True)}


def test_pil_path_scales_16_bit_like_its_8_bit_copy(pairs):
    out = _by_name(pairs, torch.cat(list(open_images(pairs, image_size=SIZE, resize=RESIZE, batch_size=8))))
    for name in ("gray16.png", "gray16b.tif"):
        assert (out[name] - out["gray8.png"]).abs().max() <= ONE_LEVEL, name
    # PIL reads a 48-bit PNG as 8-bit RGB itself, truncating (v >> 8) where the copy rounds:
    # at most one level apart (plus float32 rounding)
    assert (out["rgb16.png"] - out["rgb8.png"]).abs().max() <= ONE_LEVEL + 1e-5
    # mid-grey stays mid-grey: the symptom was normalised means of +2.3 (clipped to white)
    assert out["gray16.png"].mean() < 1.0


def test_tensor_path_scales_16_bit_and_mixes_bit_depths_in_one_batch(pairs):
    files = list_images(pairs)
    loader = TensorDecodeLoader(files, batch_size=len(files), image_size=SIZE, resize=RESIZE, device="cpu")
    (images, errors), = list(loader)
    assert errors == [] and images.shape == (5, 3, SIZE, SIZE) and images.dtype == torch.float32
    out = _by_name(pairs, images)
    for name in ("gray16.png", "gray16b.tif"):
        assert (out[name] - out["gray8.png"]).abs().max() <= ONE_LEVEL, name
    assert (out["rgb16.png"] - out["rgb8.png"]).abs().max() <= ONE_LEVEL
    # grayscale becomes three equal channels before normalisation
    pixels = out["gray16.png"] * torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(pixels[0] + 0.485, pixels[1] + 0.456, atol=1e-5)


def test_pil_and_tensor_paths_agree_on_16_bit(pairs):
    pil = torch.cat(list(open_images(pairs, image_size=SIZE, resize=RESIZE, batch_size=8)))
    tensor = torch.cat(list(open_images(pairs, image_size=SIZE, resize=RESIZE, batch_size=8, gpu_decode=True,
                                        device="cpu")))
    # the two resampling kernels differ by a grey level or two (as for 8-bit images)
    assert (pil - tensor).abs().max() < 3 * ONE_LEVEL


def test_images_of_unknown_scale_are_refused():
    with pytest.raises(CollapseProbeError, match="outside 0..65535"):
        to_rgb(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)))
    with pytest.raises(CollapseProbeError, match=r"outside \[0, 1\]"):
        to_rgb(Image.fromarray(np.full((4, 4), 3.0, dtype=np.float32)))
    assert to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.fromarray(np.full((4, 4), 65535, dtype=np.int32))).getpixel((0, 0)) == (255, 255, 255)
