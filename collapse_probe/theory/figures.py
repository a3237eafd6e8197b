"""Figures of the linear-model simulations, drawn with matplotlib's object API.

Each function takes a result from :mod:`collapse_probe.theory.simulate` and returns a new
``matplotlib.figure.Figure`` (no pyplot, no global state); save it with ``fig.savefig(path)``.
All spectra are plotted as log10 of the values, sorted in descending order, as in the paper
(which prints natural logs: divide by ln 10 = 2.303 to compare axes).
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from collapse_probe.theory.depth import DepthResult
from collapse_probe.theory.quantities import matched_alignment
from collapse_probe.theory.simulate import StrongAugResult, TwoLayerResult

__all__ = ["plot_alignment", "plot_depth", "plot_strong_augmentation", "plot_two_layer"]

_FLOOR = 1e-30  # exact zeros are drawn at this value rather than at -inf


def _log10(values: torch.Tensor) -> torch.Tensor:
    return torch.log10(values.double().clamp_min(_FLOOR))


def plot_strong_augmentation(result: StrongAugResult) -> Figure:
    """Figure 3: sorted log10 singular values of W and covariance eigenvalues, one line per noise level.

    >>> from collapse_probe.theory.simulate import StrongAugConfig, simulate_strong_augmentation
    >>> fig = plot_strong_augmentation(simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.0, 1.0), steps=5, n_samples=300)))
    >>> len(fig.axes)
    2
    """
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_w, ax_z = fig.subplots(1, 2)
    index = torch.arange(1, result.config.dim + 1)
    for i, noise in enumerate(result.config.noise_levels):
        ax_w.plot(index, _log10(result.weight_singular_values[i]), marker="o", ms=3, label=f"noise {noise:g}")
        ax_z.plot(index, _log10(result.spectra[i].eigenvalues), marker="o", ms=3, label=f"noise {noise:g}")
    ax_w.set(title="singular values of W", xlabel="index (sorted)", ylabel="log10 value")
    ax_z.set(title="embedding covariance eigenvalues", xlabel="index (sorted)", ylabel="log10 value")
    ax_z.legend(fontsize=8)
    c = result.config
    fig.suptitle(
        f"One linear layer{' with bias' if c.bias else ''}, noise on input dims {c.noise_from}-{c.dim - 1}, "
        f"{c.steps} SGD steps, lr {c.lr:g} (Figure 3's setting: the noisy dims shrink, none reaches zero)",
        fontsize=10,
    )
    return fig


def plot_two_layer(result: TwoLayerResult) -> Figure:
    """Figure 6: log10 singular values of W1, W2 and the embedding covariance eigenvalues over training.

    >>> from collapse_probe.theory.simulate import TwoLayerConfig, simulate_two_layer
    >>> len(plot_two_layer(simulate_two_layer(TwoLayerConfig(steps=20, n_samples=300))).axes)  # 3 panels + colorbar
    4
    """
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    steps = result.steps
    panels = (
        (result.w1_singular_values, "singular values of W1"),
        (result.w2_singular_values, "singular values of W2"),
        (result.embedding_eigenvalues, "embedding covariance eigenvalues"),
    )
    # one colour per rank on a sequential map (a 10-colour cycle would repeat over 16 lines)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    count = max(values.shape[1] for values, _ in panels)
    ranks = Normalize(vmin=1, vmax=count)
    cmap = colormaps["viridis"]
    for ax, (values, title) in zip(axes, panels, strict=True):
        logs = _log10(values)
        for k in range(logs.shape[1]):
            ax.plot(steps, logs[:, k], lw=1, color=cmap(ranks(k + 1)))
        ax.set(title=title, xlabel="SGD step", ylabel="log10 value")
    fig.colorbar(ScalarMappable(norm=ranks, cmap=cmap), ax=list(axes), label="rank (1 = largest)", shrink=0.9)
    c = result.config
    fig.suptitle(f"z = W2 W1 x, isotropic noise {c.noise:g}, lr {c.lr:g}: one line per singular value", fontsize=10)
    return fig


def plot_alignment(result: TwoLayerResult) -> Figure:
    """Figure 5: the final ``|A|`` (``A = V2^T U1``), the same with W1's singular vectors paired to
    W2's (:func:`~collapse_probe.theory.quantities.matched_alignment`), and both errors over training.

    >>> from collapse_probe.theory.simulate import TwoLayerConfig, simulate_two_layer
    >>> len(plot_alignment(simulate_two_layer(TwoLayerConfig(steps=10, n_samples=300))).axes)
    4
    """
    fig = Figure(figsize=(12, 3.7), layout="constrained")
    ax_raw, ax_matched, ax_trace = fig.subplots(1, 3)
    magnitude = result.alignment.abs()
    perm, matched_error = matched_alignment(result.alignment)
    for ax, values, title, xlabel in (
        (ax_raw, magnitude, f"|A|, sorted SVDs: error {float(result.alignment_errors[-1]):.2f}", "j (W1 left singular vector)"),
        (ax_matched, magnitude[:, perm], f"|A|, W1 vectors paired: error {matched_error:.2f}", "W1 left singular vector paired with row i"),
    ):
        image = ax.imshow(values.numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set(title=title, xlabel=xlabel, ylabel="i (W2 right singular vector)")
        ax.title.set_fontsize(9)
    fig.colorbar(image, ax=[ax_raw, ax_matched], label="|A_ij|", shrink=0.9)
    ax_trace.plot(result.steps, result.alignment_errors, label="|| |A| - I ||_F")
    ax_trace.plot(result.steps, result.matched_alignment_errors, label="after pairing")
    ax_trace.set(title="alignment error over training", xlabel="SGD step", ylabel="Frobenius norm", ylim=(0, None))
    ax_trace.title.set_fontsize(9)
    ax_trace.legend(fontsize=8)
    fig.suptitle(f"Alignment A = V2^T U1 of z = W2 W1 x at step {int(result.steps[-1])}", fontsize=10)
    return fig


def plot_depth(result: DepthResult) -> Figure:
    """Figure 11: final sorted log10 covariance eigenvalues per depth; one panel each for linear / ReLU.

    >>> from collapse_probe.theory.depth import DepthConfig, simulate_depth
    >>> len(plot_depth(simulate_depth(DepthConfig(depths=(1, 2), steps=5, n_samples=300))).axes)
    2
    """
    panels = list(result.config.relu)
    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    index = torch.arange(1, result.config.dim + 1)
    for ax, relu in zip(axes, panels, strict=True):
        for run in result.runs:
            if run.relu == relu:
                label = f"{run.depth} layer{'s' if run.depth > 1 else ''} (erank {run.final.effective_rank:.1f})"
                ax.plot(index, _log10(run.final.eigenvalues), marker="o", ms=3, label=label)
        ax.set(title="with ReLU" if relu else "linear", xlabel="index (sorted)", ylabel="log10 eigenvalue")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Embedding covariance after {result.config.steps} SGD steps, noise {result.config.noise:g}", fontsize=10
    )
    return fig
