"""The loop end to end on tiny settings: metrics, resume after a kill, non-finite loss, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from collapse_probe.ssl import NonFiniteLossError, build_model_from_checkpoint, preset_config, train
from collapse_probe.ssl.checkpoint import FORMAT


def _tiny(out, **kw):
    base = dict(width=4, batch_size=32, max_steps_per_epoch=2, epochs=3, warmup_epochs=1, monitor_every=0,
                monitor_samples=64, projector_dim=8, log_every=0, threads=1, out=str(out))
    return preset_config("demo", **{**base, **kw})


class _Killed(Exception):
    pass


def _kill_after_first_checkpoint(state):
    if state.epoch == 1:
        raise _Killed


def test_resume_after_kill_finishes_the_same_run(tmp_path):
    with pytest.raises(_Killed):
        train(_tiny(tmp_path / "a"), callbacks={"on_checkpoint": [_kill_after_first_checkpoint]})
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    resumed = train(_tiny(tmp_path / "a", resume=True))
    assert [row["epoch"] for row in resumed.metrics] == [1, 2, 3]
    assert torch.load(resumed.checkpoint_path, weights_only=True)["epoch"] == 3

    straight = train(_tiny(tmp_path / "b"))
    # per-epoch seeded data order and augmentations: the resumed run is the uninterrupted run
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.metrics[-1]["loss"] == pytest.approx(straight.metrics[-1]["loss"], rel=1e-5)


def test_checkpoint_format_and_round_trip(tmp_path):
    result = train(_tiny(tmp_path, method="directclr", d0=5, epochs=1))
    ckpt = torch.load(result.checkpoint_path, weights_only=True)  # plain types only
    assert ckpt["format"] == FORMAT
    assert ckpt["arch"] == {"backbone": "smallcnn", "small_stem": False, "width": 4, "projector": "none",
                            "projector_dims": [16], "method": "directclr", "d0": 5, "rep_dim": 16}
    assert set(ckpt) >= {"config", "model", "optimizer", "scheduler", "scaler", "epoch", "rng"}
    model = build_model_from_checkpoint(ckpt).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x))
    assert model(x).shape == (4, 5)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write left no temp file


def test_metrics_rows_hold_the_monitor_numbers(tmp_path):
    result = train(_tiny(tmp_path, epochs=2, monitor_every=1))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    row = rows[-1]
    for key in ("loss", "lr", "imgs_per_s", "online_acc", "representation/effective_rank", "representation/rankme",
                "representation/collapsed_dims", "embedding/effective_rank", "embedding/collapsed_dims"):
        assert key in row, key
    assert len(row["spectra"]["representation"]["eigenvalues"]) == 16
    assert len(row["spectra"]["embedding"]["eigenvalues"]) == 8
    assert (tmp_path / "spectra.png").stat().st_size > 1000
    assert result.metrics == rows


def _poison(state):
    if state.epoch == 1 and state.step == 3:  # second epoch, first step
        with torch.no_grad():
            next(state.model.backbone.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="NaN/Inf during epoch 2.*epoch 1"):
        train(_tiny(tmp_path), callbacks={"on_step_end": [_poison]})
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _image_folder(root, n_per_class=8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                pixels = rng.integers(0, 255, size=(40, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("augment", ["pil", "tensor"])
def test_image_folder_training_and_eval(tmp_path, augment):
    from collapse_probe.ssl.evaluate import checkpoint_features

    data = _image_folder(tmp_path / "images")
    result = train(_tiny(tmp_path / "run", data=str(data), image_size=16, batch_size=8, epochs=1, workers=0,
                         augment=augment, monitor_every=1, width=8))
    row = result.metrics[-1]
    assert row["epoch"] == 1 and row["representation/n_samples"] == 16
    train_x, train_y, val_x, val_y = checkpoint_features(str(result.checkpoint_path), str(data), workers=0, device="cpu")
    assert train_x.shape == (16, 32) and val_y.tolist() == [0] * 8 + [1] * 8
    assert torch.isfinite(train_x).all() and torch.isfinite(val_x).all()
