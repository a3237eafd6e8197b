"""Probe a torchvision ResNet-18's representation and a deeper block with the Python API.

Runs on the CPU in seconds on random weights and the built-in digits data (no download):

    python examples/python_api.py --out probe_example
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import collapse_probe
from collapse_probe.data.builtin import builtin_dataset, builtin_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("probe_example"))
    args = parser.parse_args()

    info = builtin_info("builtin:digits")
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)])
    loader = DataLoader(builtin_dataset("builtin:digits", split="all", transform=transform), batch_size=128)

    model = torchvision.models.resnet18(weights=None, num_classes=10)  # use your trained encoder here
    spectra = collapse_probe.spectrum(model, loader, layers=["layer3", "avgpool", "fc"])

    print(collapse_probe.to_frame(spectra)[["dim", "effective_rank", "rankme", "collapsed_dims", "alpha"]])
    args.out.mkdir(parents=True, exist_ok=True)
    for name, result in spectra.items():
        result.save(args.out / f"{name}.json")
    ax = collapse_probe.plot_spectra(spectra, relative=True)
    ax.figure.savefig(args.out / "spectra.png", dpi=120)
    print(f"wrote {args.out}/*.json and {args.out}/spectra.png")


if __name__ == "__main__":
    main()
