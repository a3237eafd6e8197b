"""SpectrumMonitor in a user's own loop, checked against numpy float64 on the concatenated features."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe.monitor import SpectrumMonitor


def _numpy_effective_rank(z: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1], 0, None)
    s = np.sqrt(eig)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_monitor_log_matches_numpy_and_writes_rows(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(6, 12), nn.ReLU()))
    model.add_module("head", nn.Linear(12, 3))
    data = torch.randn(300, 6, dtype=torch.float32)
    loader = DataLoader(TensorDataset(data, torch.zeros(300)), batch_size=64)
    monitor = SpectrumMonitor(loader, layers={"rep": "encoder", "emb": "head"}, metrics_path=tmp_path / "m.jsonl",
                              plot_path=tmp_path / "s.png")
    model.train()
    row = monitor.log(model, epoch=1, extra={"loss": 1.5})
    assert model.training  # mode restored

    with torch.no_grad():
        rep = model.encoder(data).double().numpy()
        emb = model(data).double().numpy()
    assert abs(row["rep/effective_rank"] - _numpy_effective_rank(rep)) < 1e-6
    assert abs(row["emb/effective_rank"] - _numpy_effective_rank(emb)) < 1e-6
    assert row["emb/dim"] == 3 and row["rep/n_samples"] == 300
    eig = np.linalg.eigvalsh(np.cov(emb, rowvar=False, ddof=1))[::-1]
    np.testing.assert_allclose(row["spectra"]["emb"]["eigenvalues"], eig, rtol=1e-6, atol=1e-10)

    monitor.log(model, epoch=2)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["loss"] == 1.5
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_monitor_callback_respects_every():
    class State:
        def __init__(self, epoch):
            self.epoch, self.row = epoch, {}
            self.model = nn.Sequential(nn.Linear(4, 4))

    loader = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=20)
    monitor = SpectrumMonitor(loader, layers=["0"], every=2, last_epoch=3)
    states = [State(e) for e in (1, 2, 3)]
    for s in states:
        monitor(s)
    assert [bool(s.row) for s in states] == [False, True, True]
    assert "0/effective_rank" in states[1].row
