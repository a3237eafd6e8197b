"""SpectrumMonitor(loggers=[...]): a real 2-epoch loop on CPU, values read back from each tracker's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe.integrations.loggers import log_eigenvalues, scalar_metrics
from collapse_probe.integrations.monitor import SpectrumMonitor


def numpy_effective_rank(z: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1], 0, None)
    s = np.sqrt(eig)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def train_with(monitor: SpectrumMonitor, epochs: int = 2):
    """A tiny regression loop; the monitor probes after every epoch. Returns model, rows, probe data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 1))
    x = torch.randn(128, 5)
    y = x[:, :1] * 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = []
    for epoch in range(1, epochs + 1):
        for i in range(0, 128, 32):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32]).backward()
            optimizer.step()
        rows.append(monitor.log(model, epoch=epoch))
    return model, rows


PROBE = torch.randn(96, 5, generator=torch.Generator().manual_seed(3))


def probe_loader():
    return DataLoader(TensorDataset(PROBE), batch_size=32)


def reference_rank(model) -> float:
    with torch.no_grad():
        return numpy_effective_rank(model[1](model[0](PROBE)).double().numpy())


def test_scalar_metrics_and_log_eigenvalues_floor():
    from collapse_probe import Spectrum

    spec = Spectrum.from_embeddings(torch.cat([torch.randn(50, 2, dtype=torch.float64), torch.zeros(50, 1, dtype=torch.float64)], 1))
    logs = log_eigenvalues(spec)
    assert np.isfinite(logs).all() and logs[-1] == pytest.approx(np.log10(spec.collapse_threshold()))  # drawn at the threshold
    assert scalar_metrics({"a/x": 1, "a/flag": True, "a/name": "s", "epoch": 2}, prefix="") == {"a/x": 1.0, "a/flag": 1.0}


def test_tensorboard_scalars_and_histogram(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from collapse_probe.integrations.loggers import TensorBoardLogger

    writer = SummaryWriter(str(tmp_path))
    monitor = SpectrumMonitor(probe_loader(), layers={"hidden": "1"},
                              loggers=[TensorBoardLogger(writer, histogram=True, image=True)])
    model, rows = train_with(monitor)
    writer.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    ranks = events.Scalars("collapse/hidden/effective_rank")
    assert [e.step for e in ranks] == [1, 2]
    assert [e.value for e in ranks] == pytest.approx([r["hidden/effective_rank"] for r in rows], rel=1e-6)
    assert ranks[-1].value == pytest.approx(reference_rank(model), rel=1e-5)  # float32 in the event file
    assert [e.value for e in events.Scalars("collapse/hidden/dim")] == [12, 12]
    (histogram,) = events.Tags()["histograms"]
    assert histogram == "collapse/hidden/log10_eigenvalues"
    assert events.Histograms(histogram)[-1].histogram_value.num == 12
    assert [e.step for e in events.Images("collapse/spectra")] == [1, 2]


def read_wandb_history(path) -> list[dict]:
    """The history rows of an offline run's ``.wandb`` file: a 7-byte ``:W&B`` header, then
    LevelDB-log records (32 KiB blocks; crc32, uint16 length, type 1 full / 2 first / 3 middle /
    4 last) each holding a protobuf ``Record``; wandb ships no Python reader of its own any more."""
    from wandb.proto import wandb_internal_pb2

    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from collapse_probe.integrations.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="collapse-probe-test", dir=str(tmp_path))
    try:
        model, rows = train_with(SpectrumMonitor(probe_loader(), layers={"hidden": "1"}, loggers=[WandbLogger(run)]))
    finally:
        run.finish()
        wandb.teardown()  # stops wandb-core, which may otherwise still be writing the run file
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = [r for r in read_wandb_history(path) if "collapse/hidden/effective_rank" in r]
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["collapse/hidden/effective_rank"] for r in history] == pytest.approx(
        [r["hidden/effective_rank"] for r in rows], rel=1e-9)
    assert history[-1]["collapse/hidden/effective_rank"] == pytest.approx(reference_rank(model), rel=1e-6)
    assert history[-1]["collapse/hidden/log10_eigenvalues/_type"] == "histogram"  # stored field by field
    assert sum(history[-1]["collapse/hidden/log10_eigenvalues/values"]) == 12


def test_mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from collapse_probe.integrations.loggers import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this flag
    mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
    try:
        with mlflow.start_run() as run:
            model, rows = train_with(SpectrumMonitor(probe_loader(), layers={"hidden": "1"}, loggers=[MLflowLogger()]))
        client = MlflowClient()
        history = client.get_metric_history(run.info.run_id, "collapse/hidden/effective_rank")
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([r["hidden/effective_rank"] for r in rows], rel=1e-9)
        assert history[-1].value == pytest.approx(reference_rank(model), rel=1e-6)
        artifact = client.download_artifacts(run.info.run_id, "spectra/epoch_2.json", str(tmp_path / "dl"))
        with open(artifact) as f:
            assert len(json.load(f)["hidden"]["eigenvalues"]) == 12

        run2 = client.create_run(run.info.experiment_id)  # explicit run_id through MlflowClient
        SpectrumMonitor(probe_loader(), layers={"hidden": "1"}, loggers=[MLflowLogger(run2.info.run_id, artifacts=False)]).log(model, epoch=5)
        (metric,) = client.get_metric_history(run2.info.run_id, "collapse/hidden/dim")
        assert (metric.step, metric.value) == (5, 12.0)
    finally:
        mlflow.set_tracking_uri(None)
