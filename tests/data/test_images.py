"""Image folders: discovery, skipping, the eval transform, and CPU-PIL vs tensor-decode agreement."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from collapse_probe.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TensorDecodeLoader,
    eval_transform,
    list_images,
    open_images,
)
from collapse_probe.errors import CollapseProbeError


def _smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB image (JPEG artefacts and resampling stay small on it)."""
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def make_folder(root, n_jpeg=6, n_png=3, corrupt=True, text=True):
    rng = np.random.default_rng(0)
    for i in range(n_jpeg):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        _smooth_image(rng, 50 + 3 * i, 40 + 2 * i).save(root / f"class{i % 2}" / f"img{i}.JPEG", quality=95)
    for i in range(n_png):
        _smooth_image(rng, 45, 60).save(root / f"p{i}.png")
    if corrupt:
        (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if text:
        (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_recursive_ignores_other_files(tmp_path):
    make_folder(tmp_path)
    files = list_images(tmp_path)
    assert len(files) == 6 + 3 + 1
    assert all(f.suffix.lower() in (".jpeg", ".png", ".jpg") for f in files)
    subset = list_images(tmp_path, max_samples=4)
    assert len(subset) == 4 and set(subset) <= set(files)


def test_missing_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(CollapseProbeError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CollapseProbeError, match="no images"):
        list_images(tmp_path / "empty")


def test_corrupt_image_skipped_with_one_warning_and_counted(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "class1" / "broken2.png").write_bytes(b"garbage")
    loader = open_images(tmp_path, image_size=16, resize=20, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert sum(len(b) for b in batches) == 9
    assert loader.n_skipped == 2
    assert len([w for w in caught if "unreadable" in str(w.message)]) == 1


def test_strict_fails_on_corrupt_image(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(CollapseProbeError, match="broken.jpg"):
        list(open_images(tmp_path, image_size=16, resize=20, batch_size=4, strict=True))


def test_eval_transform_matches_hand_computed_reference():
    image = _smooth_image(np.random.default_rng(1), 64, 48)
    out = eval_transform(32, 40)(image).numpy()
    # reference: shorter side 48 -> 40, so 64 -> int(40 * 64 / 48) = 53; PIL bilinear; centre crop
    resized = np.asarray(image.resize((53, 40), Image.BILINEAR), dtype=np.float64) / 255.0
    top, left = int(round((40 - 32) / 2.0)), int(round((53 - 32) / 2.0))
    crop = resized[top:top + 32, left:left + 32]
    expected = ((crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_tensor_decode_path_agrees_with_pil_path(tmp_path):
    make_folder(tmp_path, n_jpeg=8, n_png=0, corrupt=False)
    files = list_images(tmp_path)
    pil = torch.cat(list(open_images(tmp_path, image_size=32, resize=40, batch_size=3)))
    loader = TensorDecodeLoader(files, batch_size=3, image_size=32, resize=40, device="cpu")
    tensor = torch.cat([x for x, errors in loader if not errors])
    assert tensor.shape == pil.shape == (8, 3, 32, 32)
    difference = (tensor - pil).abs()
    # PIL rounds to uint8 after resampling, the tensor path too but with its own kernel weights:
    # allow a few grey levels (1 level = 1 / 255 / 0.225 = 0.017 in normalised units).
    assert difference.mean() < 0.005
    assert difference.max() < 0.1


def test_tensor_decode_path_skips_corrupt_and_decodes_png(tmp_path):
    make_folder(tmp_path, n_jpeg=3, n_png=2, corrupt=True)
    loader = open_images(tmp_path, image_size=16, resize=20, batch_size=8, gpu_decode=True, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(len(b) for b in batches) == 5
    assert loader.n_skipped == 1


def test_builtin_data(tmp_path):
    loader = open_images("builtin:digits", image_size=16, resize=18, batch_size=64, max_samples=100)
    assert sum(len(b) for b in loader) == 100
    with pytest.raises(CollapseProbeError, match="unknown built-in"):
        open_images("builtin:nope")


def test_symlinked_class_folders_are_followed_and_loops_are_not(tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    make_folder(store, n_jpeg=4, n_png=0, corrupt=False, text=False)  # store/class0, store/class1
    (data / "real").mkdir(parents=True)
    _smooth_image(np.random.default_rng(2), 40, 40).save(data / "real" / "own.png")
    os.symlink(store / "class0", data / "cats", target_is_directory=True)
    os.symlink(store / "class1", data / "dogs", target_is_directory=True)
    os.symlink(data, data / "real" / "loop", target_is_directory=True)  # a loop back to the root
    os.symlink(data / "real", data / "real" / "self", target_is_directory=True)  # a loop onto itself
    os.symlink(tmp_path / "gone", data / "dangling")  # a broken link is ignored
    files = list_images(data)
    assert sorted(f.relative_to(data).as_posix() for f in files) == [
        "cats/img0.JPEG", "cats/img2.JPEG", "dogs/img1.JPEG", "dogs/img3.JPEG", "real/own.png",
    ]
    assert sum(len(batch) for batch in open_images(data, image_size=16, resize=20)) == 5
