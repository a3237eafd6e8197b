"""One definition of "numerically zero" (issue 16, item 3) and a threshold that does not depend on
the dtype of a healthy input (issue 17, item 2).

* The plot legend, the points drawn at the plot's floor, the table (``to_frame`` / ``format_table``),
  the JSON, the monitor's row, its plot, the loggers' histogram and ``check`` all count the same
  collapsed dimensions of one spectrum with a known number of exact-zero and near-threshold
  eigenvalues.
* Healthy power-law embeddings read the same in float32, bfloat16 and float16; a rank-r input is
  found collapsed (d - r) in all three. References: numpy float64 and the data's construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe import Spectrum, plot_spectra, to_frame
from collapse_probe.checks.verdicts import run_checks
from collapse_probe.functional.metrics import rounding_floor
from collapse_probe.integrations.loggers import log_eigenvalues
from collapse_probe.integrations.monitor import SpectrumMonitor, plot_spectrum_history
from collapse_probe.pipeline.outputs import format_table

EPS32 = float(torch.finfo(torch.float32).eps)  # the default rtol of float64 / float32 input
# 4 healthy, 2 just above the threshold (kept), 2 just below and 4 exact zeros (collapsed)
VARIANCES = [1.0, 0.5, 0.25, 0.1, 3 * EPS32, 1.5 * EPS32, 0.5 * EPS32, 0.1 * EPS32, 0.0, 0.0, 0.0, 0.0]
COLLAPSED = 6


def known_embeddings(n: int = 400) -> torch.Tensor:
    """(n, 12) float64 whose covariance is diag(VARIANCES) to float64 round-off (1e-16 of the largest)."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(n, len(VARIANCES), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(raw - raw.mean(0))  # orthonormal columns, each summing to zero
    return q * torch.tensor(VARIANCES, dtype=torch.float64).sqrt() * math.sqrt(n - 1)


def test_the_data_has_the_known_spectrum():
    z = known_embeddings().numpy()
    reference = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]
    np.testing.assert_allclose(reference, VARIANCES, rtol=0, atol=1e-15)


def drawn_at_floor(ydata, floor) -> int:
    return int(np.sum(np.asarray(ydata) == floor))


def test_table_json_plot_monitor_loggers_and_check_count_the_same_collapsed_dims(tmp_path):
    z = known_embeddings()
    s = Spectrum.from_embeddings(z, layer="x")
    assert s.default_rtol() == EPS32 and s.collapsed_dims() == COLLAPSED
    threshold = s.collapse_threshold()
    assert threshold == pytest.approx(EPS32, rel=1e-12)
    # table and JSON
    assert to_frame({"x": s}).loc["x", "collapsed_dims"] == COLLAPSED
    assert f" {COLLAPSED}/12 " in format_table({"x": s})
    assert s.to_dict()["metrics"]["collapsed_dims"] == COLLAPSED
    assert Spectrum.load(s.save(tmp_path / "x.json")).collapsed_dims() == COLLAPSED
    # the plot: legend, the points drawn at the floor (the threshold itself), the note
    for relative in (False, True):
        ax = plot_spectra({"x": s}, relative=relative)
        (line,) = ax.get_lines()
        top = float(s.eigenvalues[0]) if relative else 1.0
        assert drawn_at_floor(line.get_ydata(), threshold / top) == COLLAPSED
        assert f"collapsed {COLLAPSED}" in ax.get_legend().get_texts()[0].get_text()
        note = ax.get_legend().get_title().get_text()
        assert note.startswith(f"{COLLAPSED} eigenvalues are numerically zero") and "1.19e-07 x largest" in note
    # check's collapsed fraction
    (result,) = run_checks({"x": s}, max_collapsed_fraction=0.9)
    assert result.value == COLLAPSED / 12
    # the monitor's row, its plot and the loggers' histogram
    monitor = SpectrumMonitor(DataLoader(TensorDataset(z), batch_size=100), layers={"x": "0"})
    row = monitor.log(nn.Sequential(nn.Identity()), epoch=1)
    assert row["x/collapsed_dims"] == COLLAPSED
    assert Spectrum.from_dict(row["spectra"]["x"]).collapsed_dims() == COLLAPSED
    probed = monitor.history[0][1]["x"]
    figure = plot_spectrum_history(monitor.history)
    (curve,) = figure.axes[0].get_lines()
    assert drawn_at_floor(curve.get_ydata(), math.log10(probed.collapse_threshold())) == COLLAPSED
    assert drawn_at_floor(log_eigenvalues(probed), math.log10(probed.collapse_threshold())) == COLLAPSED


def test_an_eigenvalue_exactly_at_the_threshold_is_collapsed_everywhere():
    tau = EPS32  # lambda_1 = 1, float32 input
    values = torch.tensor([1.0, 0.3, tau * (1 + 1e-12), tau, 0.0], dtype=torch.float64)  # just above, at, zero
    s = Spectrum(eigenvalues=values, uncentered_singular_values=values.sqrt(), mean=torch.zeros(5),
                 variances=values.clone(), n_samples=1000)
    assert s.collapsed_dims() == 2 and s.numerical_rank() == 3 and s.collapse_threshold() == tau
    (line,) = plot_spectra({"s": s}).get_lines()
    assert drawn_at_floor(line.get_ydata(), tau) == 2 and line.get_ydata()[2] > tau
    assert drawn_at_floor(log_eigenvalues(s), math.log10(tau)) == 2


# ------------------------------------------------------------------ the threshold and the input dtype

def power_law(n: int, d: int, seed: int, *, rank: int | None = None, zero_columns: int = 0,
              mean: float = 0.0) -> torch.Tensor:
    """(n, d) float64: eigenvalues i^-1 on ``rank`` directions (a random orthogonal map), then exact-zero columns."""
    g = torch.Generator().manual_seed(seed)
    r = rank or d - zero_columns
    basis, _ = torch.linalg.qr(torch.randn(d - zero_columns, r, generator=g, dtype=torch.float64))
    scales = torch.arange(1, r + 1, dtype=torch.float64) ** -0.5
    z = (torch.randn(n, r, generator=g, dtype=torch.float64) * scales) @ basis.T + mean
    return torch.cat([z, torch.zeros(n, zero_columns, dtype=torch.float64)], dim=1)


def numpy_eigenvalues(z: torch.Tensor) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(z.double().numpy(), rowvar=False))[::-1], 0, None)


@pytest.fixture(scope="module")
def healthy():
    return power_law(3000, 768, seed=0).float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_healthy_spectrum_reads_the_same_in_16_bit(healthy, dtype):
    full = Spectrum.from_embeddings(healthy)
    low = Spectrum.from_embeddings(healthy.to(dtype))
    assert low.input_dtype == str(dtype).removeprefix("torch.")
    reference = numpy_eigenvalues(healthy)
    np.testing.assert_allclose(low.eigenvalues.numpy(), reference, rtol=0.05)  # rounding moves no eigenvalue 5%
    assert full.collapsed_dims() == 0 and low.collapsed_dims() <= 3  # measured: 0 and 0
    assert low.default_rtol() < 0.1 * reference[-1] / reference[0]  # the floor is far below the smallest (5e-4)
    # the former rule, max(d eps^2, 1.19e-7): 747 of 768 "collapsed" in bfloat16
    if dtype == torch.bfloat16:
        assert low.collapsed_dims(rtol=768 * 2.0**-14) > 700


@pytest.mark.parametrize(("d", "rank", "zeros", "mean"), [(768, 384, 0, 0.0), (512, 200, 32, 1.0)])
def test_a_rank_deficient_input_is_collapsed_in_every_dtype(d, rank, zeros, mean):
    z = power_law(3000, d, seed=1, rank=rank, zero_columns=zeros, mean=mean)
    reference_rank = int(np.linalg.matrix_rank(z.numpy() - z.numpy().mean(0)))
    assert reference_rank == rank
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s = Spectrum.from_embeddings(z.to(dtype))
        assert s.collapsed_dims() == d - rank, dtype
        if dtype != torch.float32:
            # what rounding put into the null directions: under the floor, and of its order (not 100x below)
            floor = rounding_floor(dtype, mean_square=s.mean_square, dim=d, n_samples=3000)
            share = float(s.eigenvalues[rank:].max()) / floor
            assert 0.05 < share < 1.0, (dtype, share)  # measured 0.15-0.17


def test_rounding_floor_bounds_the_variance_rounding_adds_to_an_empty_direction():
    # one exact null direction of a rotated input: rounding alone gives it u^2 m / 6.5 on average
    z = power_law(3000, 64, seed=2, rank=63).float()
    for dtype, u in ((torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)):
        rounded = z.to(dtype).double()
        s = Spectrum.from_embeddings(z.to(dtype))
        noise = numpy_eigenvalues(rounded)[63]
        mean_square = float((rounded.numpy() ** 2).mean())
        assert s.mean_square == pytest.approx(mean_square, rel=1e-9)
        assert 0.02 * u * u * mean_square < noise < rounding_floor(dtype, mean_square=mean_square, dim=64, n_samples=3000)
