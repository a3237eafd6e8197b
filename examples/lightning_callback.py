"""Watch collapse from inside a Lightning run: SpectrumCallback logs through any Lightning logger.

    pip install "collapse-probe[lightning]"
    python examples/lightning_callback.py --out runs/lightning

A LightningModule (an MLP classifier on the bundled digits) trained for a few epochs on the CPU.
After each validation the callback streams a held-out loader once, computes the covariance
spectrum of the encoder's output and of the logits, and logs ``collapse/<layer>/<metric>``
through ``pl_module.log``: here into CSVLogger's metrics.csv (TensorBoardLogger, WandbLogger,
MLFlowLogger get the same names), plus the full spectra as JSONL and a plot (rank zero only).
"""

from __future__ import annotations

import argparse
import csv
import os

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from collapse_probe.integrations.lightning import SpectrumCallback
from collapse_probe.ssl.data import eval_dataset


class DigitClassifier(LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.lr = lr
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/lightning")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    train_set = eval_dataset("builtin:digits", "train", image_size=8)  # normalised (3, 8, 8) tensors
    val_set = eval_dataset("builtin:digits", "val", image_size=8)
    callback = SpectrumCallback(
        DataLoader(val_set, batch_size=256),  # the probe's own loader: every batch, fixed order
        layers={"representation": "encoder", "logits": "head"},  # display name -> module name
        every_n_epochs=1,
        metrics_path=os.path.join(args.out, "spectra.jsonl"),
        plot_path=os.path.join(args.out, "spectra.png"),
    )
    trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=[callback],
                      logger=CSVLogger(args.out, name="csv"), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
    trainer.fit(DigitClassifier(), DataLoader(train_set, batch_size=64, shuffle=True),
                DataLoader(val_set, batch_size=256))

    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        rows = [row for row in csv.DictReader(f) if row.get("collapse/representation/effective_rank")]
    for row in rows:
        print(f"epoch {int(row['epoch']) + 1}: val acc {float(row['val_acc']):.3f}  effective rank of the "
              f"representation {float(row['collapse/representation/effective_rank']):.1f} / "
              f"{float(row['collapse/representation/dim']):.0f}, of the logits "
              f"{float(row['collapse/logits/effective_rank']):.1f} / 10")
    return rows


if __name__ == "__main__":
    main()
