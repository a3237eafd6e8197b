"""Augmentations: the per-image v2 views and the batched device path."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from collapse_probe.data.augment import BatchAugment, adjust_hue, blur_kernel_size, view_transforms


def test_view_transforms_shapes_and_normalisation():
    t1, t2 = view_transforms(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = Image.new("RGB", (48, 40), color=(255, 255, 255))
    for t in (t1, t2):
        x = t(image)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert float(x.max()) <= 1.0 + 1e-6 and float(x.min()) >= -1.0 - 1e-6


def test_batch_augment_is_seeded_and_normalised():
    x = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    aug = BatchAugment(24, view=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_hue_shift_matches_torchvision_per_image():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    shift = torch.tensor([0.05, -0.1, 0.08, 0.0])
    theirs = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(4)])
    torch.testing.assert_close(adjust_hue(x, shift), theirs, atol=2e-5, rtol=0)


def test_jitter_ops_match_torchvision():
    from collapse_probe.data.augment import _blend, _gray

    torch.manual_seed(1)
    x = torch.rand(1, 3, 8, 8)
    f = torch.tensor(1.3).view(1, 1, 1, 1)
    torch.testing.assert_close(_blend(x, _gray(x), f), TF.adjust_saturation(x, 1.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(_blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f), TF.adjust_contrast(x, 1.3),
                               atol=1e-5, rtol=0)


def test_blur_keeps_constant_images_and_kernel_size():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3
    aug = BatchAugment(32, view=1)
    flat = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(aug._blur(flat, torch.Generator().manual_seed(0)), flat)
