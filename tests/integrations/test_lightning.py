"""Lightning SpectrumCallback: a real 2-epoch fit on CPU, values read back from CSVLogger's metrics.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from collapse_probe.integrations.lightning import SpectrumCallback  # noqa: E402


def numpy_effective_rank(z: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1], 0, None)
    s = np.sqrt(eig)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x).squeeze(1), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x).squeeze(1), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_lightning_callback_logs_through_csv_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = x[:, 0] - x[:, 1]
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=32)
    probe = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=16)
    callback = SpectrumCallback(probe, layers={"rep": "backbone"}, metrics_path=tmp_path / "spectra.jsonl",
                                plot_path=tmp_path / "spectra.png")
    model = Regressor()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"), callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=2)
    trainer.fit(model, train, val)

    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("collapse/rep/effective_rank")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch, none from the sanity check
    with torch.no_grad():
        rep = model.backbone(x[192:]).double().numpy()
    assert float(rows[-1]["collapse/rep/effective_rank"]) == pytest.approx(numpy_effective_rank(rep), rel=1e-6)
    assert float(rows[-1]["collapse/rep/dim"]) == 8 and float(rows[-1]["collapse/rep/n_samples"]) == 64
    assert "collapse/rep/rankme" in rows[-1] and "val_loss" in rows[0]
    assert trainer.callback_metrics["collapse/rep/effective_rank"] == pytest.approx(numpy_effective_rank(rep), rel=1e-6)

    jsonl = [json.loads(line) for line in (tmp_path / "spectra.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in jsonl] == [1, 2] and len(jsonl[-1]["spectra"]["rep"]["eigenvalues"]) == 8
    assert (tmp_path / "spectra.png").stat().st_size > 1000


def test_lightning_callback_every_n_epochs_and_submodule(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    x = torch.randn(96, 6)
    loader = DataLoader(TensorDataset(x, x[:, 0]), batch_size=32)
    callback = SpectrumCallback(loader, module="backbone", every_n_epochs=2)  # layers=None: the output
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=CSVLogger(tmp_path, name="run"), callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_train_batches=1)
    model = Regressor()
    trainer.fit(model, loader, loader)
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("collapse/output/effective_rank")]
    assert [int(r["epoch"]) for r in rows] == [1]  # epoch 2 (1-based) only
    assert float(rows[0]["collapse/output/dim"]) == 8


def test_example_script_runs(tmp_path, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "lightning_callback.py"
    rows = runpy.run_path(str(script))["main"](["--out", str(tmp_path), "--epochs", "2"])
    assert len(rows) == 2 and float(rows[-1]["collapse/representation/dim"]) == 128
    assert 1 < float(rows[-1]["collapse/logits/effective_rank"]) <= 10
    assert "effective rank of the representation" in capsys.readouterr().out
    assert (tmp_path / "spectra.png").exists() and len((tmp_path / "spectra.jsonl").read_text().splitlines()) == 2


DDP_SCRIPT = '''
import json, sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning.pytorch as L
from lightning.pytorch.loggers import CSVLogger
from collapse_probe.integrations.lightning import SpectrumCallback


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Record(L.Callback):  # after SpectrumCallback: what each rank holds
    def on_validation_epoch_end(self, trainer, pl_module):
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w") as f:
            (probe,) = [c for c in trainer.callbacks if isinstance(c, SpectrumCallback)]
            json.dump(dict(probe.last_row, spectra=None), f)


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x), batch_size=10)  # 10 batches: 5 per rank
    spectrum = SpectrumCallback(loader, layers={"rep": "backbone"}, metrics_path=f"{sys.argv[1]}/m.jsonl")
    model = Model()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn", limit_train_batches=2,
                        callbacks=[spectrum, Record()], logger=CSVLogger(sys.argv[1], name="run"),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, loader, loader)
    torch.save(model.state_dict(), f"{sys.argv[1]}/model.pt")
'''


def test_ddp_two_processes_share_the_probe_and_agree(tmp_path):
    """Two gloo processes: each streams half the probe batches, both hold the full-data spectrum."""
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300, capture_output=True)
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert rows[0] == rows[1] and rows[0]["rep/n_samples"] == 100  # not 200: each batch counted once
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in torch.load(tmp_path / "model.pt").items()})
    with torch.no_grad():
        z = model(torch.randn(100, 6, generator=torch.Generator().manual_seed(1))).double().numpy()
    assert rows[0]["rep/effective_rank"] == pytest.approx(numpy_effective_rank(z), rel=1e-6)
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1  # rank zero wrote the file once
    (metrics_csv,) = tmp_path.glob("run/*/metrics.csv")
    with open(metrics_csv) as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("collapse/rep/effective_rank")]
    assert float(row["collapse/rep/effective_rank"]) == pytest.approx(rows[0]["rep/effective_rank"], rel=1e-6)


def test_lightning_callback_logs_lidar_on_views(tmp_path, reference_lidar):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = x[:, 0] - x[:, 1]
    clean = x[192:]
    views = clean[:, None] + 0.3 * torch.randn(64, 4, 6)  # q = 4 noisy views of each held-out sample
    callback = SpectrumCallback(DataLoader(TensorDataset(clean), batch_size=16), layers={"rep": "backbone"},
                                lidar_loader=DataLoader(TensorDataset(views), batch_size=16), lidar_views=4)
    model = Regressor()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"),
                        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32),
                DataLoader(TensorDataset(clean, y[192:]), batch_size=32))
    with torch.no_grad():
        features = model.backbone(views.reshape(-1, 6)).reshape(64, 4, 8).double().numpy()
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        row = [r for r in csv.DictReader(f) if r.get("collapse/rep/lidar")][-1]
    assert float(row["collapse/rep/lidar"]) == pytest.approx(reference_lidar(features)[1], rel=1e-6)
    assert float(row["collapse/rep/lidar_n_classes"]) == 64
