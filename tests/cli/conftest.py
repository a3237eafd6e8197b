"""Shared fixtures of the CLI tests: a random resnet18 saved in every format, a small image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from collapse_probe._utils.threads import single_threaded


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny probes on shared cores: one intra-op thread avoids oversubscription stalls (measured
    under load: 10 s with one thread vs 34 s with two for the same probe). Restored afterwards."""
    with single_threaded():
        yield

#: Small images keep the whole area fast: crop 32, resize 36.
IMAGE_ARGS = ["--image-size", "32", "--resize", "36", "--workers", "0", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="session")
def image_args():
    """Options for tiny, fast probes."""
    return list(IMAGE_ARGS)


@pytest.fixture(scope="session")
def resnet_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torchvision.models.resnet18().state_dict().items()}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, resnet_state):
    """Paths of one random resnet18 in each supported format."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {"pt": root / "plain.pt", "pth": root / "plain.pth", "bin": root / "plain.bin",
             "safetensors": root / "plain.safetensors", "lightning": root / "lightning.ckpt",
             "directclr": root / "directclr.pth", "torchscript": root / "scripted.pt", "export": root / "program.pt2"}
    torch.save(resnet_state, paths["pt"])
    torch.save(resnet_state, paths["pth"])
    torch.save(resnet_state, paths["bin"])
    save_file({k: v.contiguous() for k, v in resnet_state.items()}, str(paths["safetensors"]))
    backbone = {k: v for k, v in resnet_state.items() if not k.startswith("fc.")}
    torch.save({"state_dict": {"backbone." + k: v for k, v in backbone.items()}, "epoch": 1}, paths["lightning"])
    torch.save({"model": {"module.backbone." + k: v for k, v in backbone.items()}}, paths["directclr"])
    model = torchvision.models.resnet18().eval()
    model.load_state_dict(resnet_state)
    model.fc = nn.Identity()
    example = torch.randn(4, 3, 32, 32)
    torch.jit.save(torch.jit.trace(model, example), paths["torchscript"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}), paths["export"])
    return paths


def _image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """9 readable images (JPEG and PNG, two class folders), one corrupt JPEG, one text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        _image(rng, 40 + i, 36 + 2 * i).save(root / f"c{i % 2}" / f"{i}.jpg", quality=95)
    for i in range(3):
        _image(rng, 48, 40).save(root / f"c{i % 2}" / f"p{i}.png")
    (root / "c0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "README.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def conv_model_file(tmp_path_factory):
    """``(model, path)``: a small seeded conv net (its layer "2" gives (B, 5, 4, 4) on 8 px images),
    pickled whole (probed with --trust-checkpoint)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1, stride=2)).eval()
    path = tmp_path_factory.mktemp("conv") / "a.pt"
    torch.save(model, path)
    return model, path
