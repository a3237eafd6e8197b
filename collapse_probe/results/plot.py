"""Matplotlib plots through the Figure API: no pyplot state, nothing configured at import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collapse_probe.results.spectrum import Spectrum


def new_axes(width: float = 6.0, height: float = 4.0) -> Any:
    """A fresh Axes on a pyplot-free Figure (safe in threads, servers and tests)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure.add_subplot()


def _shorten(name: str, limit: int = 36) -> str:
    """Keep legend entries readable: long names (checkpoint paths) lose their middle."""
    if len(name) <= limit:
        return name
    head = min(8, (limit - 3) // 3)  # the end names the file and layer: keep more of it
    return f"{name[:head]}...{name[-(limit - 3 - head):]}"


#: Line styles cycled with the colours, so that identical curves stay visible (a thick solid
#: line under a thinner dashed one) and lines stay distinct in greyscale print.
LINE_STYLES = ("-", "--", "-.", ":")


def role_title(name: str, role: str | None) -> str:
    """A panel title naming the layer and its role: ``"backbone (representation)"``."""
    return f"{_shorten(name, 48)} ({role})" if role else _shorten(name, 48)


def plot_spectra(spectra: Mapping[str, Spectrum], ax: Any = None, *, relative: bool = False,
                 title: str | None = None, roles: Mapping[str, str] | None = None) -> Any:
    """The paper's plot: sorted covariance eigenvalues, log scale, against their index.

    Several spectra share one Axes for comparison, each with its own colour and line style (so
    identical curves do not hide each other); each legend entry gives the dimension, effective
    rank and number of collapsed dimensions, and the legend sits below the axes, off the data.
    The collapsed dimensions are the numerically zero eigenvalues, at or below the spectrum's
    :meth:`~collapse_probe.results.spectrum.Spectrum.collapse_threshold` (``rtol x`` largest, the
    one definition the table, JSON and ``check`` use): they are drawn *at* that threshold, so a
    collapsed tail shows as a cliff down to it instead of stretching the axis to 1e-35, and the
    legend's count is exactly the curve's points on that floor; one note says so.

    A sample-limited spectrum (N samples show only ``max_rank = N - 1 < d`` dimensions) is drawn
    up to ``max_rank``; a dashed vertical line labelled ``N - 1 = ...`` marks where the sample
    count cuts the curve, and the shaded span beyond it holds the ``unobserved_dims``, which say
    nothing about the model (they are not counted as collapsed).

    Args:
        spectra: name -> Spectrum.
        ax: an Axes to draw on; a new pyplot-free Figure when None.
        relative: divide each spectrum by its largest eigenvalue (compare shapes, not scales).
        title: the Axes title [default: the layer and its role for one spectrum, else
            "Covariance spectra"].
        roles: name -> role ("representation", "embedding", "output"), shown in the title and legend.

    Returns:
        The Axes (``ax.figure.savefig(path)`` to write it).
    """
    roles = roles or {}
    if ax is None:
        ax = new_axes(6.4, 3.8 + 0.4 * len(spectra))
    limits, at_floor = [], {}
    for i, (name, spectrum) in enumerate(spectra.items()):
        values = spectrum.observed_eigenvalues.numpy().copy()
        scale = values[0] if relative and values.size and values[0] > 0 else 1.0
        values = values / scale
        floor = spectrum.collapse_threshold() / scale or 1.0  # 0 only for an all-zero spectrum
        if spectrum.collapsed_dims():
            at_floor[name] = (spectrum.collapsed_dims(), spectrum.default_rtol())
        shown = _shorten(name) + (f" ({roles[name]})" if roles.get(name) and len(spectra) > 1 else "")
        label = (f"{shown}\nd={spectrum.dim}, erank {spectrum.effective_rank:.1f}, "
                 f"collapsed {spectrum.collapsed_dims()}")
        if spectrum.sample_limited:
            label += f" of {spectrum.max_rank}, {spectrum.unobserved_dims} unobserved"
        (line,) = ax.plot(np.arange(1, values.size + 1), np.maximum(values, floor), label=label,
                          linestyle=LINE_STYLES[i % len(LINE_STYLES)], linewidth=max(1.0, 2.4 - 0.4 * i))
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
    ax.set_xlabel("index (eigenvalues sorted, largest first)")
    ax.set_ylabel("covariance eigenvalue" + (" / largest" if relative else "") + " (log scale)")
    if title is None:
        title = role_title(*next(iter((n, roles.get(n)) for n in spectra))) if len(spectra) == 1 else "Covariance spectra"
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    # below the axes, clear of the tick labels and the x label (pad in legend font sizes)
    legend = ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, 0.0), borderaxespad=3.6,
                       frameon=False, title=_floor_note(at_floor, len(spectra)) or None, title_fontsize="small",
                       alignment="left")
    legend.set_in_layout(True)
    return ax


def _floor_note(at_floor: Mapping[str, tuple[int, float]], n_spectra: int) -> str:
    """The one note that explains the points drawn at the floor (empty when there are none).

    ``at_floor``: name -> (collapsed dims, rtol): the numbers the legend and the table report.
    """
    if not at_floor:
        return ""
    rtols = {rtol for _, rtol in at_floor.values()}
    if n_spectra == 1:
        count, rtol = next(iter(at_floor.values()))
        return (f"{count} eigenvalue{'s are' if count > 1 else ' is'} numerically zero (drawn at the floor:\n"
                f"the collapse threshold, {rtol:.3g} x largest)")
    if len(rtols) == 1:
        counts = ", ".join(f"{_shorten(name, 28)} {count}" for name, (count, _) in at_floor.items())
        return f"numerically zero (drawn at the floor, the collapse\nthreshold {rtols.pop():.3g} x largest): {counts}"
    counts = ", ".join(f"{_shorten(name, 28)} {count} (at {rtol:.3g})" for name, (count, rtol) in at_floor.items())
    return f"numerically zero (drawn at the floor, each one's\ncollapse threshold x largest): {counts}"


def plot_layers(spectra: Mapping[str, Spectrum], roles: Mapping[str, str] | None = None, *,
                relative: bool = False) -> Any:
    """One panel per layer, titled with the layer and its role (``spectrum.png``); returns the Figure.

    >>> import torch
    >>> from collapse_probe.results.spectrum import Spectrum
    >>> z = torch.randn(300, 6, dtype=torch.float64)
    >>> figure = plot_layers({"fc": Spectrum.from_embeddings(z)}, {"fc": "representation"})
    >>> [ax.get_title() for ax in figure.axes]
    ['fc (representation)']
    """
    from matplotlib.figure import Figure

    roles = roles or {}
    figure = Figure(figsize=(5.2 * len(spectra), 4.0), layout="constrained")
    axes = figure.subplots(1, len(spectra), squeeze=False)[0]
    for ax, (name, spectrum) in zip(axes, spectra.items(), strict=True):
        plot_spectra({name: spectrum}, ax=ax, relative=relative, title=role_title(name, roles.get(name)))
    return figure
