"""SpectrumMonitor in a user's own loop, checked against numpy float64 on the concatenated features."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe.integrations.monitor import SpectrumMonitor


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


def _monitor_worker(rank: int, world: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    # a file rendezvous: no free-port probe that another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
        data = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
        loader = DataLoader(TensorDataset(data[rank::world]), batch_size=32)  # this rank's shard
        monitor = SpectrumMonitor(loader, layers={"hidden": "1"}, metrics_path=os.path.join(out_dir, "m.jsonl"),
                                  plot_path=os.path.join(out_dir, "s.png"))
        for epoch in (1, 2):
            row = monitor.log(model, epoch=epoch)
        torch.save({"n": row["hidden/n_samples"], "erank": row["hidden/effective_rank"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_monitor_log_writes_once_under_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_monitor_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # one row per epoch, not one per process
    assert (tmp_path / "s.png").stat().st_size > 1000
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert results[0] == results[1] and results[0]["n"] == 200  # every process gets the all-reduced row
    assert rows[-1]["hidden/n_samples"] == 200
