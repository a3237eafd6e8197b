"""Bad settings fail before training, with one-line CollapseProbeErrors."""

from __future__ import annotations

import pytest

from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.config import default_d0, preset_config, validate
from collapse_probe.ssl.model import build_model


@pytest.mark.parametrize("d0", [0, -3, 129])
def test_d0_outside_representation_is_rejected(d0):
    config = preset_config("demo", method="directclr", d0=d0)  # smallcnn width 32: rep 128
    with pytest.raises(CollapseProbeError, match="between 1 and the representation size 128"):
        build_model(config)


def test_d0_at_the_bounds_is_accepted():
    for d0 in (1, 128):
        model, arch = build_model(preset_config("demo", method="directclr", d0=d0))
        assert arch["d0"] == d0


def test_default_d0_is_the_papers_fraction():
    assert default_d0(2048) == 360
    assert build_model(preset_config("demo", method="directclr"))[1]["d0"] == default_d0(128) == 22


def test_batch_not_divisible_by_world_size():
    with pytest.raises(CollapseProbeError, match="not divisible by the world size 3"):
        validate(preset_config("demo", batch_size=256), world_size=3)
    validate(preset_config("demo", batch_size=256), world_size=4)


def test_unknown_preset_and_method():
    with pytest.raises(CollapseProbeError, match="unknown preset 'cifar'"):
        preset_config("cifar")
    with pytest.raises(CollapseProbeError, match="unknown method 'byol'"):
        validate(preset_config("demo", method="byol"))
    with pytest.raises(CollapseProbeError, match="unknown training setting"):
        preset_config("demo", learning_rate=1.0)


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(CollapseProbeError, match="does not exist"):
        validate(preset_config("demo", data=str(tmp_path / "nope")))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(CollapseProbeError, match="is empty"):
        validate(preset_config("demo", data=str(tmp_path / "empty")))
    with pytest.raises(CollapseProbeError, match="no training data"):
        validate(preset_config("imagenet"))
    with pytest.raises(CollapseProbeError, match="unknown built-in"):
        validate(preset_config("demo", data="builtin:cifar"))


def test_presets_hold_the_paper_recipe():
    c = preset_config("imagenet")
    assert (c.batch_size, c.lr, c.epochs, c.warmup_epochs, c.weight_decay) == (4096, 4.8, 100, 10.0, 1e-6)
    assert (c.momentum, c.trust_coefficient, c.final_lr_ratio, c.temperature) == (0.9, 0.001, 0.001, 0.1)
    assert c.arch == "resnet50"
