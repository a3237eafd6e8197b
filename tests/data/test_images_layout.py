"""collapse_probe.data.images is one door over folders / transforms / skipping / tensor_decode."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import collapse_probe.data.images as images
from collapse_probe.data import folders, skipping, tensor_decode, transforms

# every public name images.py defined before it was split (commit e5dcb1b)
NAMES = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "SIXTEEN_BIT_MODES", "ImageFiles", "SkippingItems",
         "SkippingLoader", "TensorDecodeLoader", "collate_skipping", "default_resize", "describe_error",
         "eval_transform", "list_images", "load_image", "normalize_batch", "open_images", "resize_center_crop",
         "sixteen_bit_values", "to_rgb", "_BuiltinItems"]


def test_every_name_is_still_importable_from_images_and_is_the_submodules_object():
    homes = [folders, skipping, tensor_decode, transforms]
    for name in NAMES:
        value = getattr(images, name)
        home = [m for m in homes if getattr(m, name.lstrip("_"), None) is value]
        assert home or name == "open_images", name
    assert set(images.__all__) >= {n for n in NAMES if not n.startswith("_")}


def test_a_subset_of_a_folder_is_the_seeded_uniform_draw(tmp_path):
    """max_samples keeps the files torch.randperm(n, seed 0)[:k] picks, sorted (not the first k)."""
    for i in range(12):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i:02d}.png")
    everything = images.list_images(tmp_path)
    picked = images.list_images(tmp_path, max_samples=5)
    keep = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].sort().values.tolist()
    assert picked == [everything[i] for i in keep]
    assert images.list_images(tmp_path, max_samples=50) == everything


def test_the_two_paths_share_one_geometry():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    pil = transforms.eval_transform(32)(image)
    tensor = torch.as_tensor(np.array(image)).permute(2, 0, 1)
    twin = transforms.normalize_batch(transforms.resize_center_crop(tensor.float(), 36, 32)[None])[0]
    assert pil.shape == twin.shape == (3, 32, 32)
    assert float((pil - twin).abs().max()) < 4 / 255 / min(transforms.IMAGENET_STD)
