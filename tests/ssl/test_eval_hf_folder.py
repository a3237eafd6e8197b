"""`eval` takes the sources `spectrum` takes: a Hugging Face folder's images are normalised by its
own processor, and its ModelOutput gives the token-averaged hidden states (issue 16 item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from collapse_probe.data.transforms import eval_transform
from collapse_probe.ssl.evaluate import eval_features

transformers = pytest.importorskip("transformers")
MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)


def test_eval_features_of_a_folder_use_its_processor(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("c0", "c1"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=24, patch_size=8)
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dino")
    transformers.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24},
                                   image_mean=list(MEAN), image_std=list(STD)).save_pretrained(tmp_path / "dino")
    features = eval_features(str(tmp_path / "dino"), str(tmp_path / "data"), workers=0)
    model = transformers.AutoModel.from_pretrained(str(tmp_path / "dino"), local_files_only=True).eval()
    transform = eval_transform(24, None, mean=MEAN, std=STD)
    files = sorted((tmp_path / "data" / "val").rglob("*.png"))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state.mean(dim=1)
    assert features.image_size == 24 and features.val_x.shape == (6, 16)
    torch.testing.assert_close(features.val_x, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
