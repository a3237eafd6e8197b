"""Shared pieces of the ``track`` tests: trainer-format checkpoints of a tiny CNN written directly
(seeded random weights, no training), a small image folder, the CLI runner, one torch thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from collapse_probe._utils.threads import single_threaded
from collapse_probe.ssl.checkpoint import save_checkpoint
from collapse_probe.ssl.config import TrainConfig
from collapse_probe.ssl.model import build_model

#: Fast probes: 16 px crops (the checkpoints record image_size 16), one process, small batches.
FAST = ["--workers", "0", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def one_thread():
    with single_threaded():
        yield


def write_checkpoint(path, *, seed: int, epoch: int, step: int | None = None, collapse: bool = False,
                     width: int = 4) -> None:
    """A collapse-probe trainer checkpoint of a smallcnn + linear projector with seeded random
    weights; ``collapse``: the projector's weight becomes rank 1 (its output collapses)."""
    config = TrainConfig(arch="smallcnn", width=width, projector="linear", projector_dim=8, image_size=16,
                         data="builtin:digits", seed=seed)
    model, arch = build_model(config)
    if collapse:
        with torch.no_grad():
            weight = model.projector.weight
            u, s, v = torch.linalg.svd(weight)
            weight.copy_(s[0] * torch.outer(u[:, 0], v[0]))
    payload = {"arch": arch, "config": config.to_dict(), "model": model.state_dict(), "epoch": epoch}
    if step is not None:
        payload["step"] = step
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, payload)


@pytest.fixture
def run_dir(tmp_path):
    """tmp/run/checkpoints/epoch_000{1,2,3}.pt (steps 10, 20, 30)."""
    folder = tmp_path / "run" / "checkpoints"
    for epoch in (1, 2, 3):
        write_checkpoint(folder / f"epoch_{epoch:04d}.pt", seed=epoch, epoch=epoch, step=10 * epoch)
    return folder


def _image(rng, width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """22 readable images (JPEG and PNG of several sizes, one grayscale, two class folders) and one
    corrupt JPEG, so batch boundaries and an unreadable image both matter."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(18):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        _image(rng, 30 + i, 24 + 2 * i).save(root / f"c{i % 2}" / f"{i:02d}.jpg", quality=90)
    for i in range(3):
        _image(rng, 40, 32).save(root / "c1" / f"p{i}.png")
    _image(rng, 28, 28, "L").save(root / "c0" / "gray.png")
    (root / "c0" / "05_corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


