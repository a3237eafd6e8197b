"""Collapse over training: one row per checkpoint and layer, the plots against step, the gate.

* :func:`trajectory_frame`: the table (``trajectory.csv``): step, every metric of
  :meth:`Spectrum.metrics` (``*_se``: its jackknife standard error when probed with groups),
  ``n_samples`` and the sample-limit flags (``sample_limited``, ``unobserved_dims``);
* :func:`plot_trajectory`: each metric against step, a line per layer, +-1 standard error bands
  (``trajectory.png``);
* :func:`plot_spectra_by_step`: the sorted log spectra of every checkpoint, coloured by step, one
  panel per layer, the paper's plot (``spectra.png``);
* :func:`drop_gate`: how far each metric of the latest checkpoint fell from its best and from
  the checkpoint before, against the stated fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collapse_probe.results.spectrum import Spectrum

#: Metrics drawn in trajectory.png, in this order.
PLOTTED = ("effective_rank", "rankme", "collapsed_dims", "stable_rank", "alpha")
#: Metrics the gate can watch: each is larger for a healthier embedding, so a fall is collapse.
GATED = ("effective_rank", "rankme", "numerical_rank", "stable_rank", "participation_ratio")


@dataclass(frozen=True)
class Point:
    """One checkpoint of a trajectory: its ``label`` (the checkpoint path), ``step``, spectra by
    layer, each layer's role, and columns to repeat on each of its rows (``extra``)."""

    label: str
    step: float
    spectra: Mapping[str, Spectrum]
    roles: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


def _step_value(step: float) -> float | int:
    return int(step) if float(step).is_integer() else float(step)


def trajectory_frame(points: Sequence[Point]) -> pd.DataFrame:
    """One row per (checkpoint, layer), in step order: ``checkpoint, step, layer, role``, every
    metric (and its ``_se`` with groups), then ``extra``.

    >>> import torch
    >>> from collapse_probe.results.spectrum import Spectrum
    >>> s = Spectrum.from_embeddings(torch.randn(50, 4, dtype=torch.float64))
    >>> trajectory_frame([Point("b.pt", 2, {"fc": s}), Point("a.pt", 1, {"fc": s})])[["checkpoint", "step", "layer"]].values.tolist()
    [['a.pt', 1, 'fc'], ['b.pt', 2, 'fc']]
    """
    rows = []
    for point in sorted(points, key=lambda p: p.step):
        for layer, s in point.spectra.items():
            metrics = {k: v for k, v in s.metrics().items() if k != "layer"}
            rows.append({"checkpoint": point.label, "step": _step_value(point.step), "layer": layer,
                         "role": point.roles.get(layer, ""), **metrics, **point.extra})
    return pd.DataFrame(rows)


def plot_trajectory(frame: pd.DataFrame, metrics: Sequence[str] = PLOTTED) -> Any:
    """Each metric against step (one panel each), a line per layer, a +-1 SE band where the
    frame has ``METRIC_se`` (groups); returns the Figure."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if m in frame.columns]
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        for layer, part in frame.groupby("layer", sort=False):
            part = part.sort_values("step")
            steps = part["step"].to_numpy(dtype=float)
            values = part[metric].to_numpy(dtype=float)
            (line,) = ax.plot(steps, values, marker="o", markersize=3, label=layer)
            se = f"{metric}_se"
            if se in part.columns and part[se].notna().any():
                errors = part[se].to_numpy(dtype=float)
                ax.fill_between(steps, values - errors, values + errors, color=line.get_color(), alpha=0.2,
                                linewidth=0)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if metrics:
        axes[0].legend(fontsize="small", title="layer (band: +-1 jackknife SE)" if any(
            f"{m}_se" in frame.columns for m in metrics) else "layer")
    return figure


def plot_spectra_by_step(points: Sequence[Point]) -> Any:
    """The sorted covariance eigenvalues (log scale) of every checkpoint, one panel per layer,
    each curve coloured by its step (viridis, a colour bar names the steps). Eigenvalues at or
    below the collapse threshold are drawn at it, as in :func:`~collapse_probe.results.plot.plot_spectra`."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    points = sorted(points, key=lambda p: p.step)
    layers = list(dict.fromkeys(layer for p in points for layer in p.spectra))
    figure = Figure(figsize=(5.2 * max(1, len(layers)), 4.0), layout="constrained")
    axes = figure.subplots(1, max(1, len(layers)), squeeze=False)[0]
    steps = [p.step for p in points]
    norm = Normalize(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    cmap = colormaps["viridis"]
    for ax, layer in zip(axes, layers, strict=False):
        for point in points:
            if layer not in point.spectra:
                continue
            s = point.spectra[layer]
            values = s.observed_eigenvalues.numpy()
            floor = s.collapse_threshold() or 1.0
            ax.plot(np.arange(1, values.size + 1), np.maximum(values, floor), color=cmap(norm(point.step)),
                    linewidth=1.4)
        role = next((p.roles.get(layer) for p in points if p.roles.get(layer)), "")
        ax.set_title(f"{layer} ({role})" if role else layer)
        ax.set_yscale("log")
        ax.set_xlabel("index (eigenvalues sorted, largest first)")
        ax.set_ylabel("covariance eigenvalue (log scale)")
        ax.grid(True, alpha=0.3)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="step")
    return figure


def drop_gate(frame: pd.DataFrame, metrics: Sequence[str], *, max_drop: float | None = None,
              max_step_drop: float | None = None) -> dict[str, Any]:
    """How far each watched metric of the latest checkpoint fell, per layer.

    ``drop_from_best = (best - latest) / |best|`` over all checkpoints so far, and
    ``step_drop = (previous - latest) / |previous|`` against the checkpoint before; a check fails
    when a drop exceeds ``max_drop`` / ``max_step_drop`` (a rise is a negative drop). Returns
    ``{"max_drop", "max_step_drop", "latest_step", "checks": [...], "failed"}``.

    >>> f = pd.DataFrame({"step": [1, 2, 3], "layer": "fc", "effective_rank": [10.0, 12.0, 9.0]})
    >>> g = drop_gate(f, ["effective_rank"], max_drop=0.2)
    >>> round(g["checks"][0]["drop_from_best"], 3), g["failed"]
    (0.25, True)
    """
    checks = []
    latest_step = frame["step"].max() if len(frame) else None
    for layer, part in frame.groupby("layer", sort=False):
        part = part.sort_values("step")
        for metric in metrics:
            values = part[metric].astype(float)
            if values.isna().all():
                continue
            latest, best_at = values.iloc[-1], values.idxmax()
            best = values.loc[best_at]
            check = {"layer": layer, "metric": metric, "latest_step": _step_value(part["step"].iloc[-1]),
                     "latest": latest, "best": best, "best_step": _step_value(part.loc[best_at, "step"]),
                     "drop_from_best": _fraction(best, latest)}
            if len(values) > 1:
                check |= {"previous": values.iloc[-2], "previous_step": _step_value(part["step"].iloc[-2]),
                          "step_drop": _fraction(values.iloc[-2], latest)}
            reasons = []
            if max_drop is not None and check["drop_from_best"] > max_drop:
                reasons.append(f"fell {check['drop_from_best']:.1%} from its best > --max-drop {max_drop:g}")
            if max_step_drop is not None and check.get("step_drop", -math.inf) > max_step_drop:
                reasons.append(f"fell {check['step_drop']:.1%} since the checkpoint before > --max-step-drop "
                               f"{max_step_drop:g}")
            checks.append(check | {"failed": bool(reasons), "reasons": reasons})
    return {"max_drop": max_drop, "max_step_drop": max_step_drop,
            "latest_step": None if latest_step is None else _step_value(latest_step),
            "checks": checks, "failed": any(c["failed"] for c in checks)}


def _fraction(reference: float, latest: float) -> float:
    if math.isnan(reference) or math.isnan(latest):
        return math.nan
    if reference == 0:
        return 0.0 if latest == 0 else (-math.inf if latest > 0 else math.inf)
    return float((reference - latest) / abs(reference))


def gate_lines(gate: Mapping[str, Any]) -> list[str]:
    """One line per check: ``fc effective_rank: 9.00 at step 3, best 12.00 (step 2): -25.0% ... FAIL``."""
    lines = []
    for c in gate["checks"]:
        text = (f"{c['layer']} {c['metric']}: {c['latest']:.2f} at step {c['latest_step']}, best {c['best']:.2f} "
                f"(step {c['best_step']}): {0.0 - c['drop_from_best']:+.1%} from best")
        if "step_drop" in c:
            text += f", {0.0 - c['step_drop']:+.1%} since step {c['previous_step']}"
        lines.append(text + (": FAIL (" + "; ".join(c["reasons"]) + ")" if c["failed"] else ": ok"))
    return lines
