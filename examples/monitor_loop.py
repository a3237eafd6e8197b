"""Attach collapse_probe's SpectrumMonitor to your own training loop (no reference trainer needed).

    python examples/monitor_loop.py --out runs/monitor_loop

A plain supervised loop on the bundled digits with a two-layer MLP; every epoch the monitor
streams the held-out split once, computes the covariance spectra of the hidden layer and the
output, appends effective rank, RankMe, collapsed dims and the full spectra to metrics.jsonl,
and redraws spectra.png. Runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from collapse_probe.integrations.monitor import SpectrumMonitor
from collapse_probe.ssl.data import eval_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/monitor_loop")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    train_set = eval_dataset("builtin:digits", "train", image_size=8)  # normalised (3, 8, 8) tensors
    val_set = eval_dataset("builtin:digits", "val", image_size=8)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 128), nn.ReLU()))
    model.add_module("head", nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    monitor = SpectrumMonitor(
        DataLoader(val_set, batch_size=256),
        layers={"representation": "encoder", "logits": "head"},  # display name -> module name
        metrics_path=os.path.join(args.out, "metrics.jsonl"),
        plot_path=os.path.join(args.out, "spectra.png"),
    )
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        row = monitor.log(model, epoch=epoch, extra={"loss": loss.item()})
        print(f"epoch {epoch}: loss {row['loss']:.3f}  effective rank of the representation "
              f"{row['representation/effective_rank']:.1f} / {row['representation/dim']}")


if __name__ == "__main__":
    main()
