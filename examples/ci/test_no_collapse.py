"""pytest gate on dimensional collapse: `pytest examples/ci/test_no_collapse.py`.

Set COLLAPSE_CHECKPOINT to the checkpoint to test (any format `collapse-probe spectrum` reads; add
COLLAPSE_ARCH for a bare state_dict). Without it, a freshly initialised torchvision resnet18 is
tested, so the file runs as is. The bounds are examples: set them from a known-good run
(`collapse-probe spectrum` prints the numbers).
"""

from __future__ import annotations

import os

import pytest
import torch

from collapse_probe.data.images import open_images
from collapse_probe.models.loading import load_encoder_with_report
from collapse_probe.testing import assert_no_collapse

DATA = os.environ.get("COLLAPSE_DATA", "builtin:digits")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = os.environ.get("COLLAPSE_CHECKPOINT")
    arch = os.environ.get("COLLAPSE_ARCH")
    if path is None:  # a stand-in so the example runs anywhere
        import torchvision

        path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), path)
        arch = "resnet18"
    return load_encoder_with_report(path, arch)


def test_representation_has_not_collapsed(encoder):
    # the crop size a collapse-probe trainer checkpoint was trained at, else 32 px for the stand-in.
    # 300 images show at most 299 of a layer's dimensions: on a wider layer (the stand-in's 512)
    # a bound is judged only when it holds whatever the unshown dims do; a tighter one raises
    # CannotJudgeError ("need at least 513 samples") -- then probe more than d images.
    loader = open_images(DATA, image_size=encoder.image_size or 32, batch_size=128, max_samples=300)
    layers = list(encoder.default_layers) or None
    spectra = assert_no_collapse(encoder.model, loader, layers=layers, min_effective_rank=2.0,
                                 max_collapsed_fraction=0.95, device="cpu")
    assert all(s.n_samples == 300 for s in spectra.values())
