"""One evaluation transform: the trainer's held-out loader and ``collapse-probe spectrum`` agree exactly."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from collapse_probe.data.images import open_images
from collapse_probe.ssl.data import eval_loader


def _write_val_folder(root):
    rng = np.random.default_rng(0)
    for k, (width, height) in enumerate([(50, 40), (41, 67), (90, 90), (37, 45)]):
        folder = root / "val" / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        image.save(folder / f"img{k}.jpg" if k % 2 else folder / f"img{k}.png")
    gray16 = rng.integers(0, 65536, size=(48, 40), dtype=np.uint16)
    Image.fromarray(gray16).save(root / "val" / "class1" / "deep.png")  # a 16-bit image on both paths


def test_trainer_eval_path_and_cli_path_give_identical_tensors(tmp_path):
    _write_val_folder(tmp_path)
    for size in (32, 24):  # 32: int(36.57) = 36, where round() would give 37
        trainer = torch.cat([x for x, _ in eval_loader(str(tmp_path), "val", size, batch_size=3)])
        cli = torch.cat(list(open_images(tmp_path / "val", image_size=size, batch_size=2)))
        assert trainer.shape == cli.shape == (5, 3, size, size)
        assert torch.equal(trainer, cli)
        assert trainer[2:].abs().max() < 3  # the 16-bit image (sorted third in class1) is not clipped to white
