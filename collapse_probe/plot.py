"""Matplotlib plots through the Figure API: no pyplot state, nothing configured at import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collapse_probe.result import Spectrum


FLOOR = 1e-15
"""Relative to the largest eigenvalue: below this, float64 round-off (plots draw it there)."""


def new_axes(width: float = 6.0, height: float = 4.0) -> Any:
    """A fresh Axes on a pyplot-free Figure (safe in threads, servers and tests)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure.add_subplot()


def _shorten(name: str, limit: int = 36) -> str:
    """Keep legend entries readable: long names (checkpoint paths) lose their middle."""
    if len(name) <= limit:
        return name
    keep = (limit - 3) // 2
    return f"{name[:keep]}...{name[-keep:]}"


def plot_spectra(spectra: Mapping[str, Spectrum], ax: Any = None, *, relative: bool = False) -> Any:
    """The paper's plot: sorted covariance eigenvalues, log scale, against their index.

    Several spectra share one Axes for comparison; each legend entry gives the effective rank and
    the number of collapsed dimensions. Eigenvalues below ``FLOOR`` (1e-15) of a spectrum's
    largest are float64 round-off, exact zeros included: they are drawn at that floor, so a
    collapsed tail shows as a cliff down to it instead of stretching the axis to 1e-35.

    A sample-limited spectrum (N samples show only ``max_rank = N - 1 < d`` dimensions) is drawn
    up to ``max_rank``; a dashed vertical line labelled ``N - 1 = ...`` marks where the sample
    count cuts the curve, and the shaded span beyond it holds the ``unobserved_dims``, which say
    nothing about the model (they are not counted as collapsed).

    Args:
        spectra: name -> Spectrum.
        ax: an Axes to draw on; a new pyplot-free Figure when None.
        relative: divide each spectrum by its largest eigenvalue (compare shapes, not scales).

    Returns:
        The Axes (``ax.figure.savefig(path)`` to write it).
    """
    if ax is None:
        ax = new_axes()
    limits = []
    for name, spectrum in spectra.items():
        values = spectrum.observed_eigenvalues.numpy().copy()
        top = values[0] if values.size and values[0] > 0 else 1.0
        if relative:
            values, top = values / top, 1.0
        floor = FLOOR * top
        below = int((values < floor).sum())
        label = (f"{_shorten(name)} (d={spectrum.dim}, erank {spectrum.effective_rank:.1f}, "
                 f"collapsed {spectrum.collapsed_dims()}")
        if spectrum.sample_limited:
            label += f" of {spectrum.max_rank}, {spectrum.unobserved_dims} unobserved"
        label += ")"
        if below:
            label += f", {below} at the floor"
        (line,) = ax.plot(np.arange(1, values.size + 1), np.maximum(values, floor), label=label, linewidth=1.5)
        if spectrum.sample_limited:
            limits.append((spectrum, line.get_color()))
    for spectrum, color in limits:
        cut = spectrum.max_rank + 0.5
        ax.axvline(cut, color=color, linestyle="--", linewidth=1.0)
        ax.axvspan(cut, spectrum.dim + 0.5, color=color, alpha=0.07, linewidth=0)
        name = "N - 1" if spectrum.center else "N"
        ax.annotate(f"{name} = {spectrum.max_rank}\n{spectrum.unobserved_dims} dims unobserved", xy=(cut, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(4, -4), textcoords="offset points",
                    ha="left", va="top", fontsize="small", color=color)
    if limits:
        ax.set_xlim(0, max(s.dim for s in spectra.values()) + 1)
    ax.set_yscale("log")
    ax.set_xlabel("singular value rank index")
    ax.set_ylabel("covariance eigenvalue" + (" / largest" if relative else "") + " (log scale)")
    ax.set_title("Embedding covariance spectrum")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return ax
