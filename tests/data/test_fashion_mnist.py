"""builtin:fashion-mnist: read from the installed idx files, never downloaded, refused out loud when absent.

The reader is checked against idx files this test writes (so it runs on every machine), and, where
Debian's ``dataset-fashion-mnist`` is installed, against an independent numpy parse of the real files.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from collapse_probe.data.builtin import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    builtin_available,
    builtin_dataset,
    require_builtin,
)
from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.config import preset_config, validate
from collapse_probe.ssl.data import builtin_tensors, eval_dataset, subset_indices, train_stream
from collapse_probe.ssl.distributed import DistInfo


def _write_idx(folder, stem: str, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    """The idx format by its definition: big-endian magic (0x0803 images, 0x0801 labels), sizes, bytes."""
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(os.path.join(folder, f"{stem}-images-idx3-ubyte{suffix}"), "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
    with opener(os.path.join(folder, f"{stem}-labels-idx1-ubyte{suffix}"), "wb") as handle:
        handle.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A 300-image train and 100-image test set in the Fashion-MNIST layout; returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for stem, n, gz in (("train", 300, True), ("t10k", 100, False)):  # gzipped and plain files both read
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(tmp_path, stem, images, labels, gz=gz)
        arrays[stem] = (images, labels)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    return arrays


def test_reader_returns_the_files_pixels_and_labels(fake_fashion):
    train = builtin_dataset("builtin:fashion-mnist", split="train")
    val = builtin_dataset("builtin:fashion-mnist", split="val")
    assert (len(train), len(val), len(builtin_dataset("fashion-mnist", split="all"))) == (300, 100, 400)
    image, label = val[7]
    assert image.size == (28, 28) and label == 7
    pixels = np.asarray(image)  # grey replicated into RGB, no resampling at the native size
    assert np.array_equal(pixels[..., 0], fake_fashion["t10k"][0][7]) and np.array_equal(pixels[..., 2], pixels[..., 0])
    images, labels = builtin_tensors("builtin:fashion-mnist", "train")
    assert images.shape == (300, 3, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images[:, 1], torch.from_numpy(fake_fashion["train"][0]))
    assert torch.equal(labels, torch.from_numpy(fake_fashion["train"][1].astype(np.int64)))


def test_eval_images_are_normalised_with_fashion_statistics(fake_fashion):
    x, y = eval_dataset("builtin:fashion-mnist", "val", 28)[3]
    expected = (fake_fashion["t10k"][0][3] / 255.0 - 0.286) / 0.353
    assert torch.allclose(x[0].double(), torch.from_numpy(expected), atol=1e-6) and int(y) == 3


def test_absent_files_are_refused_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert not builtin_available("builtin:fashion-mnist")
    with pytest.raises(CollapseProbeError, match=r"apt-get install dataset-fashion-mnist") as error:
        builtin_dataset("builtin:fashion-mnist")
    assert "\n" not in str(error.value)
    with pytest.raises(CollapseProbeError, match="dataset-fashion-mnist"):  # before any training work
        validate(preset_config("fashion", epochs=1))


def test_truncated_or_foreign_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    images = np.zeros((10, 28, 28), np.uint8)
    _write_idx(tmp_path, "t10k", images, np.zeros(10, np.uint8), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CollapseProbeError, match="truncated"):
        require_builtin("builtin:fashion-mnist")
    path.write_bytes(struct.pack(">IIII", 2049, 10, 28, 28) + images.tobytes())
    with pytest.raises(CollapseProbeError, match="wrong magic number"):
        require_builtin("builtin:fashion-mnist")


def test_train_subset_is_fixed_and_the_same_for_every_seed(fake_fashion):
    first, again = subset_indices(300, 200), subset_indices(300, 200)
    assert torch.equal(first, again) and len(first.unique()) == 200 and bool((first.diff() > 0).all())
    assert subset_indices(300, 300) is None and subset_indices(300, None) is None
    for seed in (0, 1):
        config = preset_config("fashion", train_subset=200, batch_size=50, seed=seed)
        stream = train_stream(config, DistInfo(rank=0, world_size=1, local_rank=0), torch.device("cpu"))
        images, _ = builtin_tensors("builtin:fashion-mnist", "train")
        assert len(stream) == 4 and torch.equal(stream.images, images[first])
    with pytest.raises(CollapseProbeError, match="smaller than the batch size"):
        validate(preset_config("fashion", train_subset=100, batch_size=128))


@pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_installed_data_set_matches_an_independent_parse(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as handle:
        test_images = np.frombuffer(handle.read()[16:], np.uint8).reshape(10000, 28, 28)
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz")) as handle:
        train_labels = np.frombuffer(handle.read()[8:], np.uint8)
    train = builtin_dataset("builtin:fashion-mnist", split="train")
    val = builtin_dataset("builtin:fashion-mnist", split="val")
    assert (len(train), len(val)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert np.array_equal(train.labels, train_labels) and np.array_equal(val.images, test_images)
    pixels = train.images / 255.0  # the normalisation constants are the training pixels' own
    assert abs(pixels.mean() - 0.286) < 5e-4 and abs(pixels.std() - 0.353) < 5e-4


def test_train_subset_of_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(12):
        folder = tmp_path / "train" / f"class{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)).save(folder / f"img{k:02d}.png")
    config = preset_config("demo", data=str(tmp_path), augment="pil", image_size=8, batch_size=2, train_subset=6,
                           workers=0)
    stream = train_stream(config, DistInfo(), torch.device("cpu"))
    assert len(stream) == 3 and stream.num_classes == 3  # 6 of 12 images in batches of 2; every class still counted
    assert list(stream.loader.dataset.indices) == subset_indices(12, 6).tolist()
    x1, x2, y = next(iter(stream.epoch(0)))
    assert x1.shape == x2.shape == (2, 3, 8, 8) and y.shape == (2,)
