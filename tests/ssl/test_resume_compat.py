"""--resume continues a run as it was trained, or refuses in one line: never a half-loaded model."""

from __future__ import annotations

import pytest
import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl import preset_config, train
from collapse_probe.ssl.config import SETTINGS_BEFORE_THEY_EXISTED, TrainConfig


def _tiny(out, **kw):
    base = dict(width=4, batch_size=32, max_steps_per_epoch=1, epochs=1, warmup_epochs=0, monitor_every=0,
                projector_dim=8, log_every=0, threads=1, out=str(out))
    return preset_config("demo", **{**base, **kw})


def test_a_config_saved_before_a_setting_existed_gets_the_old_behaviour():
    saved = _tiny("x").to_dict()
    for key in SETTINGS_BEFORE_THEY_EXISTED:
        saved.pop(key)
    restored = TrainConfig.from_dict(saved)
    assert restored.online_head == "sgd-bn" and restored.joint_batchnorm is True
    assert TrainConfig.from_dict(_tiny("x").to_dict()).online_head == "lars"


def test_resume_with_another_online_head_is_refused_in_one_line(tmp_path):
    train(_tiny(tmp_path, online_head="sgd-bn"))
    before = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"]
    with pytest.raises(CollapseProbeError, match=r"--resume: .* does not fit this run's model, online head") as caught:
        train(_tiny(tmp_path, online_head="lars", resume=True, epochs=2))
    assert "\n" not in str(caught.value)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == before  # nothing overwritten
