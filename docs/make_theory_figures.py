"""Regenerate docs/figures/theory_*.png: the paper's linear-model simulations with default settings.

    python docs/make_theory_figures.py        # about a minute on a 2-core CPU

The same figures as ``collapse-probe theory strong-aug`` and ``collapse-probe theory two-layer``
with their defaults (seed 0, CPU), so the documentation shows what the commands print. The JSON
of all numbers is not kept here (it is large); the summary tables are printed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from collapse_probe.theory.depth import DepthConfig
from collapse_probe.theory.report import strong_augmentation_report, two_layer_report
from collapse_probe.theory.simulate import StrongAugConfig, TwoLayerConfig

FIGURES = Path(__file__).resolve().parent / "figures"
DPI = 80  # keeps every PNG well under 200 KB


def main() -> None:
    FIGURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        reports = [
            strong_augmentation_report(StrongAugConfig(), scratch, dpi=DPI),
            two_layer_report(TwoLayerConfig(), DepthConfig(), scratch, dpi=DPI),
        ]
        for report in reports:
            print(report.table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
            for path in report.files:
                if path.suffix == ".png":
                    shutil.copy(path, FIGURES / path.name)
                    print(f"wrote {FIGURES / path.name} ({(FIGURES / path.name).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
