"""Metrics on spectra with known answers, and RankMe against numpy's SVD."""

import math

import numpy as np
import pytest
import torch

from collapse_probe import Spectrum
from collapse_probe.functional import metrics as cpf


def spectrum_of(eigenvalues, n_samples=10_000, input_dtype="float32") -> Spectrum:
    values = torch.tensor(sorted(eigenvalues, reverse=True), dtype=torch.float64)
    return Spectrum(
        eigenvalues=values, uncentered_singular_values=values.sqrt(), mean=torch.zeros(len(values)),
        variances=values.clone(), n_samples=n_samples, input_dtype=input_dtype,
    )


@pytest.mark.parametrize("k", [1, 3, 17])
def test_k_equal_eigenvalues_give_effective_rank_k(k):
    s = spectrum_of([2.5] * k + [0.0] * (32 - k))
    assert s.effective_rank == pytest.approx(k, rel=1e-12)
    assert s.stable_rank == pytest.approx(k, rel=1e-12)
    assert s.participation_ratio == pytest.approx(k, rel=1e-12)
    assert s.numerical_rank() == k and s.collapsed_dims() == 32 - k


def test_effective_rank_by_hand_on_two_values():
    # singular values sqrt(4)=2 and sqrt(1)=1: p = (2/3, 1/3), H = -(2/3 ln 2/3 + 1/3 ln 1/3)
    s = spectrum_of([4.0, 1.0])
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s.effective_rank == pytest.approx(math.exp(entropy), rel=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_exact_power_law_gives_its_slope(alpha):
    ranks = np.arange(1, 201, dtype=np.float64)
    s = spectrum_of(list(3.0 * ranks**-alpha))
    fit = s.alpha_req()
    assert fit.alpha == pytest.approx(alpha, rel=1e-10) and fit.r2 == pytest.approx(1.0, abs=1e-12)
    partial = s.alpha_req(fit_range=(10, 50))
    assert (partial.start, partial.stop) == (10, 50) and partial.alpha == pytest.approx(alpha, rel=1e-10)


def test_alpha_is_nan_when_fewer_than_two_directions():
    assert math.isnan(spectrum_of([1.0, 0.0, 0.0]).alpha_req().alpha)


def test_rankme_matches_numpy_svd_of_the_uncentred_matrix():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3000, 20)) @ np.diag(np.linspace(2, 0.01, 20)) + 0.7
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    expected = math.exp(-(p * np.log(p)).sum())
    streamed = Spectrum.from_embeddings(torch.as_tensor(z), chunk_size=256)
    np.testing.assert_allclose(streamed.uncentered_singular_values.numpy(), s, rtol=1e-9)
    assert streamed.rankme == pytest.approx(expected, rel=1e-10)
    # and differs from the same entropy on centred data (a convention peers mix up)
    centred = np.linalg.svd(z - z.mean(0), compute_uv=False)
    assert streamed.effective_rank == pytest.approx(math.exp(-(lambda q: (q * np.log(q)).sum())(centred / centred.sum())), rel=1e-9)
    assert abs(streamed.rankme - streamed.effective_rank) > 0.1


def test_default_rtol_is_the_rounding_floor_of_the_input_precision():
    # rtol = max(eps_f32, u^2 (m + t^2) (1 + sqrt(d/N))^2 / lambda_1), u = 2^-24 / 2^-11 / 2^-8, t the smallest normal
    growth = (1 + math.sqrt(768 / 3000)) ** 2
    kwargs = dict(n_samples=3000, mean_square=0.01, top=1.0)
    assert cpf.default_rtol(768, torch.float32, **kwargs) == torch.finfo(torch.float32).eps
    assert cpf.default_rtol(768, torch.float64, **kwargs) == torch.finfo(torch.float32).eps
    assert cpf.default_rtol(768, torch.bfloat16, **kwargs) == pytest.approx(2.0**-16 * 0.01 * growth, rel=1e-12)
    assert cpf.default_rtol(768, torch.float16, mean_square=1.0, top=1e-3, n_samples=3000) == pytest.approx(
        2.0**-22 * (1.0 + 2.0**-28) * growth / 1e-3, rel=1e-12)
    # a float32 input with a mean of 1e4: rounding it to float32 alone adds variance 2^-48 1e8 = 3.6e-7
    assert cpf.default_rtol(8, torch.float32, n_samples=10**6, mean_square=1e8, top=1.0) == pytest.approx(
        2.0**-48 * 1e8 * (1 + math.sqrt(8e-6)) ** 2, rel=1e-12)
    s32 = spectrum_of([1.0, 1e-4, 1e-9], input_dtype="float32")
    s16 = spectrum_of([1.0, 1e-4, 1e-9], input_dtype="bfloat16")  # N = 10^4, ddof 1, mean 0: m = sum(lambda) (N-1)/N / 3
    mean_square = (1 + 1e-4 + 1e-9) * 0.9999 / 3
    assert s16.default_rtol() == pytest.approx(2.0**-16 * mean_square * (1 + math.sqrt(3e-4)) ** 2, rel=1e-12)
    assert (s32.collapsed_dims(), s16.collapsed_dims()) == (1, 1)
    assert s32.collapsed_dims(rtol=1e-12) == 0 and s16.collapsed_dims(rtol=1e-3) == 2


def test_mean_square_is_the_mean_squared_entry_in_every_convention():
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 + 3
    unit = z / z.norm(dim=1, keepdim=True)
    for center, normalize, ddof, rows in ((True, False, 1, z), (False, False, 0, z), (True, True, 1, unit),
                                          (True, False, 0, z), (False, True, 1, unit)):
        s = Spectrum.from_embeddings(z, center=center, normalize=normalize, ddof=ddof)
        assert s.mean_square == pytest.approx(float((rows.numpy() ** 2).mean()), rel=1e-12)


def test_save_load_round_trip_is_exact(tmp_path):
    z = torch.randn(500, 6, dtype=torch.float64) * torch.logspace(0, -5, 6, dtype=torch.float64)
    s = Spectrum.from_embeddings(z, normalize=True, layer="proj")
    loaded = Spectrum.load(s.save(tmp_path / "s.json"))
    assert torch.equal(loaded.eigenvalues, s.eigenvalues)
    assert loaded.conventions() == s.conventions() and loaded.layer == "proj"
    assert loaded.metrics() == s.metrics()


def test_load_rejects_other_json(tmp_path):
    from collapse_probe import CollapseProbeError

    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(CollapseProbeError, match="not a collapse-probe spectrum"):
        Spectrum.load(path)
    with pytest.raises(CollapseProbeError, match="not found"):
        Spectrum.load(tmp_path / "missing.json")


def test_frames_and_plot():
    from collapse_probe import plot_spectra, to_frame

    a = Spectrum.from_embeddings(torch.randn(400, 8, dtype=torch.float64), layer="a")
    b = spectrum_of([1.0, 0.5, 0.0, 0.0])
    frame = to_frame({"a": a, "b": b})
    assert list(frame.index) == ["a", "b"] and frame.loc["b", "collapsed_dims"] == 2
    assert a.to_frame().shape[0] == 1
    ax = plot_spectra({"a": a, "b": b})
    assert len(ax.get_lines()) == 2 and ax.get_yscale() == "log"
    zeros_drawn = ax.get_lines()[1].get_ydata()
    # exact zeros at the collapse threshold, rtol x largest
    assert len(zeros_drawn) == 4 and zeros_drawn[-1] == b.collapse_threshold() == torch.finfo(torch.float32).eps


def test_alpha_fit_range_errors_are_clear():
    from collapse_probe import CollapseProbeError

    s = spectrum_of([1.0, 0.5, 0.25])
    with pytest.raises(CollapseProbeError, match="fit_range"):
        s.alpha_req(fit_range=(2, 9))


# ------------------------------------------------------------------ sample-limited spectra (issue 8, rows 6-8)


def _garrido_rankme(z: np.ndarray) -> float:
    """RankMe as Garrido et al. publish it: numpy's singular values (min(N, d) of them) + 1e-7."""
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    return math.exp(-(p * np.log(p)).sum())


def _entropy_rank_np(s: np.ndarray) -> float:
    p = s[s > 0] / s[s > 0].sum()
    return math.exp(-(p * np.log(p)).sum())


def test_sample_limited_spectrum_counts_collapse_among_the_dims_the_samples_show():
    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((300, 512))  # 300 samples of a 512-d, full-rank embedding
    collapsed = healthy[:, :50] @ rng.standard_normal((50, 512))  # rank 50: a collapsed one
    for z, rank in ((healthy, 299), (collapsed, 50)):
        s = Spectrum.from_embeddings(torch.as_tensor(z))
        assert rank == np.linalg.matrix_rank(z - z.mean(0))  # independent reference
        assert (s.max_rank, s.sample_limited, s.unobserved_dims) == (299, True, 213)
        assert s.numerical_rank() == rank and s.collapsed_dims() == 299 - rank
        assert s.collapsed_fraction() == pytest.approx((299 - rank) / 299, rel=1e-15)
        assert s.collapsed_dims() + s.numerical_rank() + s.unobserved_dims == 512
        m = s.metrics()
        assert (m["max_rank"], m["unobserved_dims"], m["sample_limited"], m["collapsed_dims"]) == (299, 213, True, 299 - rank)
        assert s.to_frame().loc[0, "unobserved_dims"] == 213 and s.to_dict()["metrics"]["unobserved_dims"] == 213
        assert "unobserved_dims=213" in repr(s)
    full = Spectrum.from_embeddings(torch.as_tensor(rng.standard_normal((600, 512))))
    assert (full.max_rank, full.sample_limited, full.unobserved_dims, full.collapsed_dims()) == (512, False, 0, 0)


@pytest.mark.parametrize(("center", "ddof", "max_rank"), [(True, 1, 9), (True, 0, 9), (False, 0, 10), (False, 1, 10)])
def test_max_rank_is_the_rank_the_samples_allow_whatever_the_divisor(center, ddof, max_rank):
    z = np.random.default_rng(1).standard_normal((10, 16)) + 3.0
    s = Spectrum.from_embeddings(torch.as_tensor(z), center=center, ddof=ddof)
    reference = np.linalg.matrix_rank(z - z.mean(0) if center else z)
    assert s.max_rank == reference == max_rank == s.numerical_rank() and s.unobserved_dims == 16 - max_rank


def test_effective_rank_of_a_sample_limited_spectrum_matches_numpy_svd():
    z = np.random.default_rng(2).standard_normal((100, 400)) * np.linspace(2.0, 0.1, 400)
    s = Spectrum.from_embeddings(torch.as_tensor(z))
    expected = _entropy_rank_np(np.linalg.svd(z - z.mean(0), compute_uv=False)[:99])
    assert s.effective_rank == pytest.approx(expected, rel=1e-9) and s.effective_rank <= s.max_rank


@pytest.mark.parametrize(("n", "d"), [(256, 2048), (3000, 256)])
def test_rankme_uses_min_n_d_singular_values_as_published(n, d):
    z = np.random.default_rng(3).standard_normal((n, d)) * np.linspace(1.0, 0.05, d) + 0.3
    s = Spectrum.from_embeddings(torch.as_tensor(z), chunk_size=1000)
    assert s.rankme == pytest.approx(_garrido_rankme(z), rel=1e-9)


def test_functional_metrics_refuse_anything_but_a_vector():
    rng = np.random.default_rng(4)
    z = torch.as_tensor(rng.standard_normal((256, 15)) @ np.linalg.qr(rng.standard_normal((64, 15)))[0].T)  # 15 equal svs
    singular_values = torch.linalg.svdvals(z / torch.linalg.svdvals(z)[0])
    assert cpf.effective_rank(singular_values) == pytest.approx(_entropy_rank_np(singular_values.numpy()), rel=1e-12)
    for function in (cpf.effective_rank, cpf.rankme, cpf.stable_rank, cpf.participation_ratio,
                     cpf.mean_std_of_normalized, lambda x: cpf.numerical_rank(x, 1e-7),
                     lambda x: cpf.power_law_fit(x, (1, 2))):
        with pytest.raises(ValueError, match=r"1-D vector .* got shape \(256, 64\).*svdvals"):
            function(z)
        with pytest.raises(ValueError, match=r"1-D vector"):
            function(torch.tensor(3.0))


def test_plot_marks_where_the_sample_limit_cuts_the_curve():
    from collapse_probe import plot_spectra

    s = Spectrum.from_embeddings(torch.randn(40, 64, dtype=torch.float64))
    ax = plot_spectra({"few": s, "many": spectrum_of([1.0] * 64)})
    curve, full, cut = ax.get_lines()
    assert len(curve.get_xdata()) == 39 and len(full.get_xdata()) == 64
    assert list(cut.get_xdata()) == [39.5, 39.5]
    assert [t.get_text() for t in ax.texts] == ["N - 1 = 39\n25 dims unobserved"]
    assert "collapsed 0 of 39, 25 unobserved" in ax.get_legend().get_texts()[0].get_text()


def test_functional_holds_metrics_in_metrics_and_moment_maths_in_moments():
    import collapse_probe.functional as functional
    from collapse_probe.functional import metrics, moments

    for name in functional.__all__:  # every public name at collapse_probe.functional.<name>
        assert getattr(functional, name) is getattr(metrics, name, getattr(moments, name, None)), name
    for name in ("batch_moments", "merge_moments"):
        assert getattr(functional, name) is getattr(moments, name) and not hasattr(metrics, name)
    for dead in ("symmetric_eigenvalues", "uncentred_gram", "covariance_from_moments"):  # twins of moments'
        assert not hasattr(functional, dead) and not hasattr(metrics, dead)
    one = torch.tensor(1.0, dtype=torch.float64)
    n, mean, m2 = functional.merge_moments(one, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.zeros(2, 2).double(),
                                           *functional.batch_moments(torch.tensor([[3.0, 2.0]], dtype=torch.float64)))
    assert (int(n), mean.tolist(), m2.tolist()) == (2, [2.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])  # by hand
