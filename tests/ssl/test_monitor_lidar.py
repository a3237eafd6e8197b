"""SpectrumMonitor's LiDAR probe and the trainer's --monitor-lidar-views: the row's numbers against
numpy float64 on the captured features and against ``collapse_probe.lidar``; off by default."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import collapse_probe
from collapse_probe.errors import CollapseProbeError
from collapse_probe.integrations.monitor import SpectrumMonitor
from collapse_probe.ssl import preset_config, train
from collapse_probe.ssl.config import TrainConfig, validate
from collapse_probe.ssl.loop import default_callbacks, lidar_loader
from collapse_probe.ssl.model import build_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(6, 12), nn.Tanh()))
    model.add_module("head", nn.Linear(12, 5))
    return model


class _Recorder:
    def __init__(self):
        self.rows = []

    def log_probe(self, row, *, epoch, spectra, history=None):
        from collapse_probe.integrations.loggers import scalar_metrics

        self.rows.append(scalar_metrics(row))


def test_monitor_lidar_equals_the_lidar_function_and_numpy(tmp_path, reference_lidar):
    model = _model()
    x = torch.randn(90, 4, 6)  # 90 samples, q = 4 views each
    views = DataLoader(TensorDataset(x), batch_size=16)
    recorder = _Recorder()
    monitor = SpectrumMonitor(DataLoader(TensorDataset(x[:, 0]), batch_size=32),
                              layers={"rep": "encoder", "emb": "head"},
                              lidar_loader=views, lidar_views=4, metrics_path=tmp_path / "m.jsonl",
                              loggers=[recorder])
    model.train()
    row = monitor.log(model, epoch=1)
    assert model.training  # mode restored

    direct = collapse_probe.lidar(model, views, views=4, layers=["encoder", "head"], progress=False)
    with torch.no_grad():
        rep = model.encoder(x.flatten(0, 1))
        features = {"rep": rep, "emb": model.head(rep)}
    for name, layer in (("rep", "encoder"), ("emb", "head")):
        assert row[f"{name}/lidar"] == pytest.approx(direct[layer].lidar, rel=1e-9)
        reference = reference_lidar(features[name].double().numpy().reshape(90, 4, -1))[1]
        assert row[f"{name}/lidar"] == pytest.approx(reference, rel=1e-9)
        assert row[f"{name}/lidar_n_classes"] == 90
        assert row["lidar"][name]["conventions"]["delta"] == 1e-4
    assert row["rep/lidar_max_rank"] == 12 and row["emb/lidar_max_rank"] == 5
    written = json.loads((tmp_path / "m.jsonl").read_text())
    assert written["rep/lidar"] == row["rep/lidar"] and written["lidar"]["emb"]["views"] == 4
    assert recorder.rows[0]["collapse/rep/lidar"] == row["rep/lidar"]  # trackers get it like every scalar


def test_monitor_lidar_needs_its_views():
    views = DataLoader(TensorDataset(torch.randn(8, 2, 6)), batch_size=4)
    for bad in (None, 1):
        with pytest.raises(CollapseProbeError, match="lidar_views"):
            SpectrumMonitor(views, layers=["head"], lidar_loader=views, lidar_views=bad)


def test_off_by_default_and_for_older_checkpoints():
    assert TrainConfig().monitor_lidar_views == 0 and preset_config("demo").monitor_lidar_views == 0
    older = {k: v for k, v in preset_config("demo").to_dict().items() if k != "monitor_lidar_views"}
    assert TrainConfig.from_dict(older).monitor_lidar_views == 0  # trained without it: stays off
    config = preset_config("demo", width=4, projector_dim=8, monitor_samples=40)
    (monitor,) = default_callbacks(config)["on_epoch_end"]
    assert monitor.lidar_loader is None
    row = monitor.probe(build_model(config)[0])
    assert "representation/effective_rank" in row
    assert not [key for key in row if "lidar" in key]


def test_bad_lidar_settings_are_refused():
    with pytest.raises(CollapseProbeError, match="--monitor-lidar-views must be 0"):
        validate(preset_config("demo", monitor_lidar_views=1), check_data=False)
    with pytest.raises(CollapseProbeError, match="monitor every 0"):
        validate(preset_config("demo", monitor_lidar_views=4, monitor_every=0), check_data=False)
    with pytest.raises(CollapseProbeError, match="no val/ folder"):
        lidar_loader(preset_config("demo", data="/nonexistent/images", monitor_lidar_views=4))


def test_train_logs_lidar_on_held_out_views(tmp_path):
    config = preset_config("demo", epochs=1, max_steps_per_epoch=2, width=4, batch_size=32, projector_dim=8,
                           monitor_lidar_views=4, monitor_samples=100, threads=1, out=str(tmp_path))
    result = train(config)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    score = row["representation/lidar"]
    assert math.isfinite(score) and 1.0 <= score <= min(16, 100 - 1)  # smallcnn width 4: 16 dims
    assert row["representation/lidar_n_classes"] == 100 and row["embedding/lidar_n_classes"] == 100
    assert 1.0 <= row["embedding/lidar"] <= 8
    # the same views through the public function on the trained model give the logged number
    direct = collapse_probe.lidar(result.model, lidar_loader(config), views=4, layers=["backbone"], progress=False)
    assert score == pytest.approx(direct["backbone"].lidar, rel=1e-6)
