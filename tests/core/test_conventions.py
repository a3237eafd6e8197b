"""The field's metric conventions, each equal to its peer's own code on the same embeddings (issue 11, part 3).

Peers: reptrix 0.1.0 (``get_alpha``, ``get_rankme``: used when installed, and re-implemented here
in numpy from its published formula either way), stable-pretraining 0.1.8's ``RankMe`` callback
and lightly 1.6's ``std_of_l2_normalized`` (re-implemented here: their installs pull in Lightning).
Every reference is written in this file, never taken from the code under test.
"""

import numpy as np
import pytest
import torch

from collapse_probe import CovarianceAccumulator, Spectrum
from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional.metrics import power_law_fit


def power_law_embeddings(n=600, d=128, alpha=1.2, mean=0.3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, d + 1, dtype=torch.float64) ** (-alpha / 2)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ basis.T + mean


def reference_weighted_alpha(z: np.ndarray, first: int = 11, last: int = 100) -> float:
    """Weighted least squares of log(lambda_i) on -log(i) with weights 1/i, ranks first..last (1-based),
    lambda the centred covariance's eigenvalues: the alpha-ReQ authors' / reptrix's get_alpha."""
    centred = z - z.mean(axis=0)
    eig = np.linalg.svd(centred, compute_uv=False) ** 2  # proportional to the covariance's eigenvalues
    ranks = np.arange(first, last + 1, dtype=np.float64)
    design = np.stack([-np.log(ranks), np.ones_like(ranks)], axis=1)
    weights = 1.0 / ranks
    normal = design.T @ (design * weights[:, None])
    rhs = design.T @ (weights * np.log(eig[first - 1 : last]))
    return float(np.linalg.solve(normal, rhs)[0])


def reference_entropy_rank(values: np.ndarray, eps: float) -> float:
    p = values / values.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_inverse_rank_alpha_equals_the_authors_weighted_fit():
    z = power_law_embeddings()
    s = Spectrum.from_embeddings(z)
    fit = s.power_law(fit_range=(11, 100), weighting="inverse_rank")
    assert (fit.start, fit.stop) == (11, 100)
    assert fit.alpha == pytest.approx(reference_weighted_alpha(z.numpy()), rel=1e-6)
    # the unweighted fit over the same ranks is another number, and power_law() is alpha_req()
    assert abs(s.power_law(fit_range=(11, 100)).alpha - fit.alpha) > 1e-3
    assert s.power_law() == s.alpha_req()
    assert s.power_law(fit_range=(2, 50)) == s.alpha_req(fit_range=(2, 50)) == s.power_law((2, 50))


def test_inverse_rank_alpha_equals_reptrix_get_alpha():
    alpha_module = pytest.importorskip("reptrix.alpha")
    z = power_law_embeddings(seed=1)
    theirs = alpha_module.get_alpha(z, fit_range=np.arange(10, 100))[0]  # float64 in, so float64 PCA
    ours = Spectrum.from_embeddings(z).power_law(fit_range=(11, 100), weighting="inverse_rank").alpha
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_weighted_fit_recovers_an_exact_power_law_and_rejects_bad_arguments():
    ranks = torch.arange(1, 201, dtype=torch.float64)
    for weighting in ("none", "inverse_rank"):
        fit = power_law_fit(3.0 * ranks**-0.8, (11, 100), weighting=weighting)
        assert fit.alpha == pytest.approx(0.8, rel=1e-12) and fit.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weighting"):
        power_law_fit(ranks**-1.0, (1, 10), weighting="stringer")
    small = Spectrum.from_embeddings(torch.randn(300, 32, dtype=torch.float64))
    with pytest.raises(CollapseProbeError, match="fit_range"):
        small.power_law(fit_range=(11, 100), weighting="inverse_rank")  # d = 32 < 100


def test_power_law_takes_fit_range_as_alpha_req_does_and_ranks_still_works_with_a_warning():
    s = Spectrum.from_embeddings(power_law_embeddings(seed=3))
    with pytest.warns(DeprecationWarning, match="fit_range"):
        old = s.power_law(ranks=(11, 100), weighting="inverse_rank")
    assert old == s.power_law(fit_range=(11, 100), weighting="inverse_rank")
    with pytest.raises(CollapseProbeError, match="fit_range only"):
        s.power_law(fit_range=(1, 10), ranks=(1, 10))


@pytest.mark.parametrize("n", [400, 60])  # N > d, and N < d (min(N, d) singular values)
def test_rankme_eps_matches_stable_pretraining_callback(n):
    z = power_law_embeddings(n=n, d=96, seed=2)
    s = Spectrum.from_embeddings(z)
    singular = torch.linalg.svdvals(z).numpy()  # uncentred, as the callback's svdvals(encoding)
    assert s.rankme_with_eps(1e-5) == pytest.approx(reference_entropy_rank(singular, 1e-5), rel=1e-6)
    assert s.rankme_with_eps(1e-7) == s.rankme == pytest.approx(reference_entropy_rank(singular, 1e-7), rel=1e-6)
    assert s.rankme_with_eps(1e-5) > s.rankme  # the larger eps always scores higher


@pytest.mark.parametrize("n", [500, 80])
def test_effective_rank_of_eigenvalues_equals_reptrix_rankme(n):
    z = power_law_embeddings(n=n, d=96, seed=3)
    s = Spectrum.from_embeddings(z)
    centred = z.numpy() - z.numpy().mean(axis=0)
    eig = np.linalg.svd(centred, compute_uv=False) ** 2  # min(N, d) PCA variances
    assert s.effective_rank_of_eigenvalues() == pytest.approx(reference_entropy_rank(eig, 1e-7), rel=1e-6)
    assert s.effective_rank_of_eigenvalues(eps=0.0) == pytest.approx(reference_entropy_rank(eig, 0.0), rel=1e-6)
    assert s.effective_rank_of_eigenvalues() < s.effective_rank
    rankme_module = pytest.importorskip("reptrix.rankme")
    assert s.effective_rank_of_eigenvalues() == pytest.approx(float(rankme_module.get_rankme(z)), rel=1e-6)


def lightly_std_of_l2_normalized(z: torch.Tensor) -> float:
    """lightly.utils.debug.std_of_l2_normalized: the mean over dimensions of torch.std (N - 1) of z / ||z||."""
    unit = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float(unit.std(dim=0).mean())


@pytest.mark.parametrize("normalize,center", [(False, True), (False, False), (True, True), (True, False)])
def test_std_of_l2_normalized_streams_on_raw_input(normalize, center):
    z = power_law_embeddings(n=700, d=24, seed=4) * 5.0
    expected = lightly_std_of_l2_normalized(z)
    acc = CovarianceAccumulator(24, normalize=normalize, center=center)
    for start, size in ((0, 3), (3, 250), (253, 1), (254, 446)):  # staged and direct batches
        acc.update(z[start : start + size].float() if start == 3 else z[start : start + size])
    streamed = acc.compute()
    z_mixed = torch.cat([z[:3], z[3:253].float().double(), z[253:]])
    assert streamed.std_of_l2_normalized == pytest.approx(lightly_std_of_l2_normalized(z_mixed), rel=1e-6)
    in_memory = Spectrum.from_embeddings(z, normalize=normalize, center=center)
    assert in_memory.std_of_l2_normalized == pytest.approx(expected, rel=1e-9)
    again = Spectrum.from_dict(streamed.to_dict())  # survives the JSON round trip
    assert again.std_of_l2_normalized == pytest.approx(streamed.std_of_l2_normalized, rel=1e-12)


def test_std_of_l2_normalized_merges_and_skips_nonfinite_rows():
    z = power_law_embeddings(n=400, d=8, seed=5)
    dirty = z.clone()
    dirty[[7, 300]] = float("nan")
    first, second = (CovarianceAccumulator(8, skip_nonfinite=True) for _ in range(2))
    first.update(dirty[:200])
    second.update(dirty[200:])
    first.merge(second)
    clean = z[[i for i in range(400) if i not in (7, 300)]]
    assert first.compute().std_of_l2_normalized == pytest.approx(lightly_std_of_l2_normalized(clean), rel=1e-9)
    restored = CovarianceAccumulator(8, skip_nonfinite=True)
    restored.load_state_dict(first.state_dict())
    assert torch.equal(restored.unit_m2, first.unit_m2)


def test_collapsed_input_gives_zero_std_of_l2_normalized():
    direction = torch.randn(1, 6, dtype=torch.float64)
    z = torch.rand(200, 1, dtype=torch.float64) * 3 + 0.5
    assert Spectrum.from_embeddings(z * direction).std_of_l2_normalized == pytest.approx(0.0, abs=1e-7)


def test_old_spectrum_files_keep_their_std_of_l2_normalized_rule():
    data = Spectrum.from_embeddings(power_law_embeddings(n=200, d=8)).to_dict()
    data.pop("unit_variances")
    assert Spectrum.from_dict(data).std_of_l2_normalized is None  # centred, not normalised: unknown
