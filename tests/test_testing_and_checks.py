"""assert_no_collapse and the check logic against hand-built healthy and collapsed encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe.checks.verdicts import run_checks
from collapse_probe.errors import CollapseProbeError
from collapse_probe.results.spectrum import Spectrum
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


# ------------------------------------------------------------------ sample-limited spectra (issue 8, row 6)


def _few_samples(rank: int | None = None, n: int = 300, d: int = 512, seed: int = 0) -> tuple[np.ndarray, Spectrum]:
    """n samples of a d-dimensional embedding, full-rank or of the given rank, and their spectrum."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    if rank is not None:
        z = z[:, :rank] @ rng.standard_normal((rank, d))
    return z, Spectrum.from_embeddings(torch.as_tensor(z))


def test_checks_refuse_to_judge_a_bound_that_depends_on_dims_the_samples_cannot_show():
    from collapse_probe.checks.verdicts import CannotJudgeError

    z, healthy = _few_samples()
    assert np.linalg.matrix_rank(z - z.mean(0)) == 299  # 300 samples show 299 of 512 dims, none collapsed
    # the case: this used to FAIL with collapsed_fraction = 0.416 (213 forced zeros)
    with pytest.raises(CannotJudgeError, match=r"between 0 and 0\.416 .*need at least 513 samples, got 300") as info:
        run_checks({"fc": healthy}, max_collapsed_fraction=0.25)
    assert info.value.needed_samples == 513 and "\n" not in str(info.value)
    with pytest.raises(CannotJudgeError, match=r"min-effective-rank \[fc\].*at most 299 of its 512"):
        run_checks({"fc": healthy}, min_effective_rank=400)  # above what 300 samples can show: not a FAIL
    with pytest.raises(CannotJudgeError, match=r"min-effective-rank \[fc\]"):
        run_checks({"fc": healthy}, min_effective_rank=290)  # below 299, but unmet only for lack of samples
    with pytest.raises(CannotJudgeError, match=r"min-rankme \[fc\].*need at least 512 samples"):
        run_checks({"fc": healthy}, min_rankme=400)


def test_checks_give_the_verdicts_that_hold_whatever_the_unobserved_dims_do():
    _, healthy = _few_samples()
    # 0 of 299 shown dims collapsed: even if all 213 unobserved were, 213/512 <= 0.5
    (result,) = run_checks({"fc": healthy}, max_collapsed_fraction=0.5)
    assert result.passed and result.value == pytest.approx(213 / 512, rel=1e-15)
    assert "at most 0.416 of 512 dims collapsed" in result.message
    (result,) = run_checks({"fc": healthy}, min_effective_rank=200)
    assert result.passed and result.value == healthy.effective_rank > 200
    z, collapsed = _few_samples(rank=50)
    assert np.linalg.matrix_rank(z - z.mean(0)) == 50
    # 249 of the 299 shown dims are collapsed: at least 249/512 of all, whatever the rest do
    (result,) = run_checks({"fc": collapsed}, max_collapsed_fraction=0.4)
    assert not result.passed and result.value == pytest.approx(249 / 512, rel=1e-15)
    assert result.message.startswith("FAIL max-collapsed-fraction [fc]: at least 0.4863 of 512 dims collapsed")


def test_max_drop_refuses_a_sample_limited_baseline_and_an_unmet_sample_limited_value():
    from collapse_probe.checks.verdicts import CannotJudgeError

    _, few = _few_samples()
    many = Spectrum.from_embeddings(torch.as_tensor(np.random.default_rng(1).standard_normal((2000, 512))))
    with pytest.raises(CannotJudgeError, match=r"baseline's effective_rank comes from 300 samples"):
        run_checks({"fc": many}, baseline={"fc": few}, max_drop=0.1)
    with pytest.raises(CannotJudgeError, match=r"max-drop \[fc\]: effective_rank = 272"):
        run_checks({"fc": few}, baseline={"fc": many}, max_drop=0.1)  # 272 < 0.9 * 420: for lack of samples
    results = run_checks({"fc": few}, baseline={"fc": many}, max_drop=0.5)
    assert [r.passed for r in results] == [True, True]


def test_assert_no_collapse_refuses_too_few_samples_instead_of_claiming_collapse():
    from collapse_probe.checks.verdicts import CannotJudgeError

    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(100, 64, generator=g) for _ in range(3)]  # 300 samples of a 64 -> 512 map
    model = nn.Linear(64, 512)
    with pytest.raises(CannotJudgeError, match=r"need at least 513 samples, got 300"):
        assert_no_collapse(model, loader, max_collapsed_fraction=0.5)  # between 235/512 and 448/512 collapsed
    with pytest.raises(AssertionError, match=r"at least 0\.459 of 512 dims"):  # 235 of the 299 shown: rank 64
        assert_no_collapse(model, loader, max_collapsed_fraction=0.3)


def test_assert_no_collapse_reports_a_judged_failure_beside_a_bound_it_cannot_judge():
    import torch
    from torch import nn

    from collapse_probe.testing import assert_no_collapse

    model = nn.Module()
    model.wide, model.narrow = nn.Linear(3, 64), nn.Linear(3, 4)
    model.forward = lambda x: (model.wide(x), model.narrow(x * 0 + x[:, :1]))  # narrow sees one direction
    loader = [torch.randn(20, 3)]
    with pytest.raises(AssertionError, match=r"FAIL min-effective-rank \[narrow\]"):
        assert_no_collapse(model, loader, min_effective_rank=19.5, layers=["wide", "narrow"])
