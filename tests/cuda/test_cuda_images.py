"""GPU JPEG decoding: TensorDecodeLoader on CUDA gives the PIL path's tensors and skips corrupt files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from collapse_probe.data.images import IMAGENET_MEAN, IMAGENET_STD, TensorDecodeLoader, open_images

pytestmark = pytest.mark.cuda

N_GOOD = 12


def _write_folder(root) -> None:
    """Smooth JPEGs (chroma-subsampled, as real photos) of several sizes, then two corrupt files
    named to sort last, so the first batches go through the batched GPU decode untouched."""
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        width, height = 320 + 17 * i, 240 + 9 * i
        Image.fromarray(small).resize((width, height), Image.BICUBIC).save(folder / f"img{i:02d}.JPEG", quality=90)
    (root / "class2" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(200))
    (root / "class2" / "zz_text.jpg").write_text("not an image at all")


def _batches(loader) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.cat([x.cpu() for x in loader])


def test_gpu_decode_matches_pil_within_two_grey_levels_and_skips_corrupt(tmp_path):
    _write_folder(tmp_path)
    common = dict(image_size=64, resize=73, batch_size=5)
    pil_loader = open_images(tmp_path, **common)
    gpu_loader = open_images(tmp_path, **common, device="cuda")
    assert isinstance(gpu_loader.loader, TensorDecodeLoader)  # CUDA picks the GPU decode path by default
    first = next(iter(gpu_loader.loader))[0]
    assert first.device.type == "cuda" and first.dtype == torch.float32 and first.shape == (5, 3, 64, 64)

    pil, gpu = _batches(pil_loader), _batches(gpu_loader)
    assert pil_loader.n_skipped == gpu_loader.n_skipped == 2
    assert pil.shape == gpu.shape == (N_GOOD, 3, 64, 64)
    # back to [0, 1] pixel units: JPEG decoders (libjpeg-turbo vs nvJPEG) and resamplers differ a little
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    difference = ((gpu - pil) * std).abs()
    assert difference.max() <= 2 / 255 + 1e-5, f"max difference {255 * difference.max():.2f} grey levels"
    pixels = pil * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_gpu_decode_strict_fails_on_corrupt(tmp_path):
    from collapse_probe.errors import CollapseProbeError

    _write_folder(tmp_path)
    with pytest.raises(CollapseProbeError, match="zz_"):
        list(open_images(tmp_path, image_size=32, batch_size=8, device="cuda", strict=True))


def test_spectrum_cli_on_gpu_decoded_images(tmp_path):
    """End to end on CUDA: `collapse-probe spectrum` over a JPEG folder, bf16, GPU decode."""
    import torchvision
    from collapse_probe_cli.errors import run_cli
    from collapse_probe_cli.main import cli

    from collapse_probe.pipeline.outputs import load_spectra

    _write_folder(tmp_path / "images")
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = run_cli(cli, ["spectrum", str(checkpoint), "--arch", "resnet18", "--data", str(tmp_path / "images"),
                             "--batch-size", "4", "--workers", "2", "--device", "cuda", "--precision", "bf16",
                             "--image-size", "64", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0
    report = load_spectra(tmp_path / "out" / "spectrum.json")
    spectra = report.spectra
    assert spectra and all(s.n_samples == N_GOOD and s.input_dtype == "bfloat16" for s in spectra.values())
