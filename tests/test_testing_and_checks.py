"""assert_no_collapse and the check logic against hand-built healthy and collapsed encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe.checks import run_checks
from collapse_probe.errors import CollapseProbeError
from collapse_probe.result import Spectrum
from collapse_probe.testing import assert_no_collapse


def _loader():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(256, 16, generator=g) for _ in range(8)]


def _rank_k_linear(k: int) -> nn.Linear:
    layer = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([1.0] * k + [0.0] * (16 - k))))
    return layer


def test_assert_no_collapse_passes_a_healthy_encoder():
    spectra = assert_no_collapse(_rank_k_linear(16), _loader(), min_effective_rank=15, max_collapsed_fraction=0.0)
    # reference: numpy on the same inputs (identity map)
    x = torch.cat(_loader()).double().numpy()
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    p = np.sqrt(eig) / np.sqrt(eig).sum()
    assert spectra["output"].effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_assert_no_collapse_fails_a_collapsed_encoder_with_every_reason():
    with pytest.raises(AssertionError) as info:
        assert_no_collapse(_rank_k_linear(4), _loader(), min_effective_rank=8, max_collapsed_fraction=0.5)
    message = str(info.value)
    assert "min-effective-rank [output]" in message and "collapsed_fraction = 0.75" in message


def test_assert_no_collapse_on_named_layers():
    model = nn.Sequential(_rank_k_linear(16), _rank_k_linear(2))
    spectra = assert_no_collapse(model, _loader(), max_collapsed_fraction=0.1, layers=["0"])
    assert list(spectra) == ["0"]
    with pytest.raises(AssertionError, match=r"\[1\]"):
        assert_no_collapse(model, _loader(), max_collapsed_fraction=0.1, layers=["0", "1"])
    with pytest.raises(ValueError):
        assert_no_collapse(model, _loader())


def test_checks_fail_on_nan_and_compare_with_baseline():
    z = torch.randn(1000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    healthy = Spectrum.from_embeddings(z)
    half = Spectrum.from_embeddings(z * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    results = run_checks({"a": half}, baseline={"b": healthy}, max_drop=0.4)  # one layer each: paired
    expected = {"effective_rank": half.effective_rank >= 0.6 * healthy.effective_rank,
                "rankme": half.rankme >= 0.6 * healthy.rankme}
    assert {r.metric: r.passed for r in results} == expected == {"effective_rank": False, "rankme": False}
    nan = Spectrum.from_embeddings(torch.zeros(10, 3, dtype=torch.float64))
    assert [r.passed for r in run_checks({"x": nan}, min_effective_rank=0.0)] == [not math.isnan(nan.effective_rank)]
    with pytest.raises(CollapseProbeError, match="no layer in common"):
        run_checks({"a": half, "c": half}, baseline={"b": healthy, "d": healthy}, max_drop=0.1)
