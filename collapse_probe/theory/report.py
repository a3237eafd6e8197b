"""Run a simulation and write its figures (PNG) and numbers (JSON) into a folder.

What ``collapse-probe theory strong-aug`` and ``theory two-layer`` call, and what
docs/make_theory_figures.py uses to regenerate the documentation's figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from collapse_probe.results.spectrum import json_safe
from collapse_probe.theory.depth import DepthConfig, DepthResult, simulate_depth
from collapse_probe.theory.figures import (
    plot_alignment,
    plot_depth,
    plot_strong_augmentation,
    plot_two_layer,
)
from collapse_probe.theory.simulate import (
    StrongAugConfig,
    StrongAugResult,
    TwoLayerConfig,
    TwoLayerResult,
    simulate_strong_augmentation,
    simulate_two_layer,
)

__all__ = ["TheoryReport", "strong_augmentation_report", "two_layer_report"]


@dataclass(frozen=True)
class TheoryReport:
    """What a report run wrote: the summary table (one row per model) and the files."""

    table: pd.DataFrame
    files: list[Path]
    results: dict[str, Any]


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(json_safe(data), indent=1))
    return path


def _save(fig: Any, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi)
    return path


def strong_augmentation_table(result: StrongAugResult) -> pd.DataFrame:
    """One row per noise level: loss, W's singular-value range and the embedding's collapse metrics."""
    rows = []
    for i, noise in enumerate(result.config.noise_levels):
        sv, spectrum = result.weight_singular_values[i], result.spectra[i]
        rows.append(
            {
                "noise": noise,
                "loss": result.losses[i],
                "log10_sv_max": math.log10(float(sv[0])),
                "log10_sv_min": math.log10(max(float(sv[-1]), 1e-300)),
                "min_eig_X_at_init": float(result.initial_x_eigenvalues[i][-1]),
                "effective_rank": spectrum.effective_rank,
                "collapsed_dims": spectrum.collapsed_dims(),
            }
        )
    return pd.DataFrame(rows)


def strong_augmentation_report(config: StrongAugConfig, out: str | Path, *, dpi: int = 100) -> TheoryReport:
    """Simulate Figure 3 and write ``theory_strong_aug.png`` and ``theory_strong_aug.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = simulate_strong_augmentation(config)
    files = [
        _save(plot_strong_augmentation(result), out / "theory_strong_aug.png", dpi),
        _write_json(out / "theory_strong_aug.json", result.to_dict()),
    ]
    return TheoryReport(table=strong_augmentation_table(result), files=files, results={"strong_aug": result})


def two_layer_table(result: TwoLayerResult, depth: DepthResult | None) -> pd.DataFrame:
    """One row for the two-layer run, then one per (depth, relu) run of the depth sweep."""
    rows = [
        {
            "model": "W2 W1 (two-layer run)",
            "steps": result.config.steps,
            "loss": result.loss,
            "effective_rank": result.spectrum.effective_rank,
            "collapsed_dims": result.spectrum.collapsed_dims(),
            "alignment_error": float(result.alignment_errors[-1]),
            "matched_alignment_error": float(result.matched_alignment_errors[-1]),
            "conserved_drift": float(result.conserved_drift[-1]),
        }
    ]
    for run in depth.runs if depth is not None else []:
        rows.append(
            {
                "model": f"depth {run.depth}{' + ReLU' if run.relu else ''}",
                "steps": depth.config.steps,
                "loss": run.loss,
                "effective_rank": run.final.effective_rank,
                "collapsed_dims": run.final.collapsed_dims(),
                "alignment_error": math.nan,
                "matched_alignment_error": math.nan,
                "conserved_drift": math.nan,
            }
        )
    return pd.DataFrame(rows)


def two_layer_report(
    config: TwoLayerConfig, depth_config: DepthConfig | None, out: str | Path, *, dpi: int = 100
) -> TheoryReport:
    """Simulate Figures 5, 6 (and 11 unless ``depth_config`` is None) and write PNGs and JSON into ``out``.

    Files: ``theory_two_layer.png`` (Fig. 6), ``theory_alignment.png`` (Fig. 5),
    ``theory_depth.png`` (Fig. 11), ``theory_two_layer.json`` (all numbers).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = simulate_two_layer(config)
    depth = simulate_depth(depth_config) if depth_config is not None else None
    files = [
        _save(plot_two_layer(result), out / "theory_two_layer.png", dpi),
        _save(plot_alignment(result), out / "theory_alignment.png", dpi),
    ]
    if depth is not None:
        files.append(_save(plot_depth(depth), out / "theory_depth.png", dpi))
    data = {"two_layer": result.to_dict(), "depth": depth.to_dict() if depth is not None else None}
    files.append(_write_json(out / "theory_two_layer.json", data))
    return TheoryReport(table=two_layer_table(result, depth), files=files, results={"two_layer": result, "depth": depth})
