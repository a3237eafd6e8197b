"""`collapse-probe lidar` takes every source `spectrum` takes: a Hugging Face folder is read with
its own image processor's rescale and normalisation, --out writes lidar.json, and a fixed-size
model at another --image-size is refused in one line (it used to end in "Internal error")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from collapse_probe.data.views import open_views

transformers = pytest.importorskip("transformers")

QUIET = ["--workers", "0", "--batch-size", "3", "--quiet"]
MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)  # far from ImageNet's, so a wrong normalisation shows


def _dino(root):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=24, patch_size=8)
    transformers.Dinov2Model(config).save_pretrained(root)
    transformers.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24},
                                   image_mean=list(MEAN), image_std=list(STD)).save_pretrained(root)
    return root


def _transformers_views(folder, image_folder, mean, std, views=4):
    """Independent reference: the same seeded views normalised by (mean, std), through the model
    transformers itself loads, token-averaged, numpy LiDAR's input (C, q, d)."""
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    loader = open_views(image_folder, views=views, image_size=24, batch_size=3, mean=mean, std=std)
    with torch.no_grad():
        rows = [model(pixel_values=x.flatten(0, 1)).last_hidden_state.mean(dim=1).reshape(x.shape[0], views, -1)
                for x in loader]
    return torch.cat(rows).double().numpy()


def test_lidar_on_a_folder_uses_its_processor_and_writes_out_json(invoke, image_folder, tmp_path, reference_lidar):
    folder = _dino(tmp_path / "dino")
    code, out, err = invoke(["lidar", folder, "--data", image_folder, "--views", "4", "--out", tmp_path / "o", *QUIET])
    assert code == 0, err
    document = json.loads((tmp_path / "o" / "lidar.json").read_text())
    layer = document["layers"]["output"]
    expected, score = reference_lidar(_transformers_views(folder, image_folder, MEAN, STD))
    assert layer["n_classes"] == 9 and document["source"]["image_size"] == 24
    np.testing.assert_allclose(layer["eigenvalues"], expected, rtol=0, atol=1e-6 * expected[0])
    assert layer["lidar"] == pytest.approx(score, rel=1e-6)
    # ImageNet's statistics (what the old path applied) give another LiDAR: the check is not a no-op
    _, imagenet_score = reference_lidar(_transformers_views(folder, image_folder, (0.485, 0.456, 0.406),
                                                            (0.229, 0.224, 0.225)))
    assert abs(imagenet_score - score) > 1e-3
    assert "preprocessing" in document["source"]


def test_lidar_refuses_a_fixed_size_model_at_another_size_in_one_line(invoke, image_folder, tmp_path):
    torch.manual_seed(1)
    config = transformers.ViTConfig(hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                                    image_size=16, patch_size=8)
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    code, out, err = invoke(["lidar", tmp_path / "vit", "--data", image_folder, "--image-size", "24", *QUIET])
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "16" in err and "24" in err


@pytest.mark.parametrize("flag, message", [(["--no-center"], "center"), (["--groups", "3"], "groups"),
                                           (["--resize", "40"], "--resize")])
def test_lidar_refuses_options_it_cannot_honour(invoke, image_folder, tmp_path, flag, message):
    folder = _dino(tmp_path / "dino")
    code, out, err = invoke(["lidar", folder, "--data", image_folder, "--views", "2", *flag, *QUIET])
    assert code == 2 and err.count("\n") == 1 and message in err, err
