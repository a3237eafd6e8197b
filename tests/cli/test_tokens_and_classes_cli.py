"""`--tokens` and `--per-class` / `--class-scatter` on the command line: the same numbers as the
library on the same images, class labels from an image folder's class sub-folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collapse_probe import spectrum
from collapse_probe.data.images import open_images

ARGS = ["--image-size", "8", "--workers", "0", "--batch-size", "4", "--quiet", "--trust-checkpoint", "--layer", "2"]


def test_per_class_on_a_folder_equals_the_library_on_its_class_folders(conv_model_file, image_folder, invoke, tmp_path):
    model, path = conv_model_file
    code, out, err = invoke(["spectrum", path, "--data", image_folder, *ARGS, "--tokens", "all", "--per-class",
                             "--class-scatter", "--json"])
    assert code == 0, err
    document = json.loads(out)
    loader = open_images(image_folder, image_size=8, batch_size=4, labels=True)
    assert loader.classes == ["c0", "c1"] and document["source"]["classes"] == ["c0", "c1"]
    reference = spectrum(model, loader, layers="2", tokens="all", per_class=True, class_scatter=True, progress=False)
    classes = document["classes"]["2"]["classes"]
    assert sorted(classes) == ["0", "1"]
    for label, entry in classes.items():
        expected = reference.classes[label].eigenvalues.numpy()
        np.testing.assert_allclose(entry["eigenvalues"], expected, rtol=0, atol=1e-9 * expected[0])
        assert entry["n_samples"] == reference.classes[label].n_samples
    assert document["layers"]["2"]["n_samples"] == 9 * 16  # 9 readable images x 4 x 4 positions
    assert document["classes"]["2"]["scatter"]["nc1"] == pytest.approx(reference.scatter.nc1, rel=1e-9)
    loud = [a for a in ARGS if a != "--quiet"]
    code, out, _ = invoke(["spectrum", path, "--data", image_folder, *loud, "--per-class", "--out", tmp_path / "o"])
    assert code == 0 and "worst class by effective_rank" in out


def test_per_class_refuses_a_flat_folder_and_text(conv_model_file, tmp_path, invoke, image_folder):
    _, path = conv_model_file
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in list(image_folder.rglob("*.png"))[:2]:
        (flat / image.name).write_bytes(image.read_bytes())
    code, out, err = invoke(["spectrum", path, "--data", flat, *ARGS, "--per-class"])
    assert code == 2 and err.count("\n") == 1 and "class sub-folders" in err
    texts = tmp_path / "t.txt"
    texts.write_text("a\nb\n")
    code, out, err = invoke(["spectrum", path, "--data", texts, *ARGS, "--per-class"])
    assert code == 2 and "labels" in err
