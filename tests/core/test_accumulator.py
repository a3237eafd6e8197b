"""CovarianceAccumulator against numpy's two-pass float64 covariance of the same values."""

import numpy as np
import pytest
import torch

from collapse_probe import (
    CollapseProbeError,
    CovarianceAccumulator,
    NonFiniteEmbeddingError,
    Spectrum,
)


def known_spectrum_data(n: int = 20_000, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rotated Gaussian data with covariance eigenvalues logspaced from 1 to 1e-12, mean offset 3."""
    rng = np.random.default_rng(seed)
    target = np.logspace(0, -12, d)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    z = (rng.standard_normal((n, d)) * np.sqrt(target)) @ rotation.T + 3.0
    return z, target


def reference_eigenvalues(z: np.ndarray, center: bool = True, ddof: int = 1) -> np.ndarray:
    """numpy float64 two-pass covariance of the concatenated data, then eigvalsh, descending."""
    z = np.asarray(z, dtype=np.float64)
    if center:
        cov = np.cov(z, rowvar=False, ddof=ddof)
    else:
        cov = z.T @ z / (z.shape[0] - ddof)
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def stream(z: np.ndarray | torch.Tensor, batch_size: int, **kwargs) -> Spectrum:
    z = torch.as_tensor(z)
    accumulator = CovarianceAccumulator(z.shape[1], **kwargs)
    for start in range(0, z.shape[0], batch_size):
        accumulator.update(z[start : start + batch_size])
    return accumulator.compute()


def assert_spectra_close(actual: np.ndarray, expected: np.ndarray, rel_large: float, of_top_all: float | None) -> None:
    """Eigenvalues above 1e-8 of the largest within ``rel_large`` of themselves; every eigenvalue
    within ``of_top_all`` times the largest (tiny ones are never compared to themselves)."""
    large = expected > 1e-8 * expected[0]
    np.testing.assert_allclose(actual[large], expected[large], rtol=rel_large, atol=0)
    if of_top_all is not None:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=of_top_all * expected[0])


@pytest.mark.parametrize("input_dtype", [np.float64, np.float32])
def test_known_spectrum_matches_two_pass_reference(input_dtype):
    z, _ = known_spectrum_data()
    values = z.astype(input_dtype)
    expected = reference_eigenvalues(values)
    actual = stream(values, batch_size=256).eigenvalues.numpy()
    # measured: 8e-16 (float64) and 1e-15 (float32 input) of the largest; one-pass: 1.7e-13
    assert_spectra_close(actual, expected, rel_large=1e-6, of_top_all=1e-14)


def test_one_pass_formula_would_fail_the_same_test():
    """Guards the test itself: E[zz^T] - mu mu^T misses the tail, so the 1e-14-of-top bound has teeth."""
    z, _ = known_spectrum_data()
    n = z.shape[0]
    mean = z.mean(axis=0)
    naive = (z.T @ z - n * np.outer(mean, mean)) / (n - 1)
    naive_values = np.clip(np.linalg.eigvalsh(naive)[::-1], 0, None)
    expected = reference_eigenvalues(z)
    assert np.abs(naive_values - expected).max() > 1e-14 * expected[0]


def test_known_spectrum_recovers_the_true_eigenvalues():
    z, target = known_spectrum_data(n=20_000)
    actual = stream(z, batch_size=1000).eigenvalues.numpy()
    # Sampling error of a covariance eigenvalue with N = 20,000 is about sqrt(2/N) ~ 1%.
    np.testing.assert_allclose(actual[:10], target[:10], rtol=0.06)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_result_does_not_depend_on_batch_size_or_order(batch_size):
    z, _ = known_spectrum_data(n=3000, d=32, seed=1)
    shuffled = z[np.random.default_rng(2).permutation(len(z))]
    expected = reference_eigenvalues(z)
    actual = stream(shuffled, batch_size=batch_size).eigenvalues.numpy()
    assert_spectra_close(actual, expected, rel_large=1e-6, of_top_all=None)


def test_merge_equals_single_stream_and_reference():
    z, _ = known_spectrum_data(n=5000, d=16, seed=3)
    parts = [CovarianceAccumulator(16) for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(z, [100, 3100]), strict=True):
        for start in range(0, len(chunk), 64):
            part.update(torch.as_tensor(chunk[start : start + 64]))
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    merged = parts[0].compute()
    assert merged.n_samples == 5000
    assert_spectra_close(merged.eigenvalues.numpy(), reference_eigenvalues(z), rel_large=1e-6, of_top_all=None)
    np.testing.assert_allclose(merged.mean.numpy(), z.mean(axis=0), rtol=1e-12)


def test_float32_accumulation_is_measurably_worse():
    """Why float64 is the default: the same update in float32 is orders of magnitude off."""
    z, _ = known_spectrum_data(n=20_000)
    expected = reference_eigenvalues(z)
    low = stream(z, batch_size=256, dtype=torch.float32).eigenvalues.numpy()
    large = expected > 1e-8 * expected[0]
    assert np.max(np.abs(low[large] - expected[large]) / expected[large]) > 1e-4


def test_blocked_lower_triangle_path_matches_reference():
    """d above one block takes the CPU block-triangular update; it must equal the reference."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((1500, 700)) * np.logspace(0, -3, 700) + 2.0
    accumulator = CovarianceAccumulator(700)
    assert accumulator._rank_update.blocked
    for start in range(0, 1500, 300):
        accumulator.update(torch.as_tensor(z[start : start + 300]))
    assert_spectra_close(accumulator.compute().eigenvalues.numpy(), reference_eigenvalues(z), 1e-6, None)


def test_uncentred_and_normalised_conventions():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2000, 10)) + 1.5
    raw = stream(z, 100, center=False)
    assert raw.ddof == 0
    expected_raw = reference_eigenvalues(z, center=False, ddof=0)
    np.testing.assert_allclose(raw.eigenvalues.numpy(), expected_raw, rtol=0, atol=1e-9 * expected_raw[0])
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    normed = stream(z, 100, normalize=True)
    expected_unit = reference_eigenvalues(unit)
    np.testing.assert_allclose(normed.eigenvalues.numpy(), expected_unit, rtol=0, atol=1e-9 * expected_unit[0])
    np.testing.assert_allclose(normed.std_of_l2_normalized, unit.std(axis=0, ddof=1).mean(), rtol=1e-9)


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    z, _ = known_spectrum_data(n=2000, d=12, seed=6)
    first = CovarianceAccumulator(12)
    first.update(torch.as_tensor(z[:1000]))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = CovarianceAccumulator(12)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    resumed.update(torch.as_tensor(z[1000:]))
    assert_spectra_close(resumed.compute().eigenvalues.numpy(), reference_eigenvalues(z), 1e-6, None)
    with pytest.raises(CollapseProbeError, match="dim"):
        CovarianceAccumulator(13).load_state_dict(first.state_dict())


def test_reset_forgets_everything():
    accumulator = CovarianceAccumulator(3)
    accumulator.update(torch.randn(10, 3))
    accumulator.reset()
    accumulator.update(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert accumulator.compute().n_samples == 2


def test_bad_input_gives_clear_errors():
    accumulator = CovarianceAccumulator(4, layer="head")
    with pytest.raises(CollapseProbeError, match=r"\(batch, 4\).*head"):
        accumulator.update(torch.randn(5, 3))
    with pytest.raises(CollapseProbeError, match="floating point"):
        accumulator.update(torch.ones(5, 4, dtype=torch.int64))
    with pytest.raises(CollapseProbeError, match="merge a dim=3"):
        accumulator.merge(CovarianceAccumulator(3))
    with pytest.raises(CollapseProbeError, match="no batches"):
        accumulator.compute()
    accumulator.update(torch.randn(1, 4))
    with pytest.raises(CollapseProbeError, match="at least 2"):
        accumulator.compute()


def test_nonfinite_rows_name_layer_and_first_batch_or_are_skipped():
    z = torch.randn(40, 3, dtype=torch.float64)
    bad = z.clone()
    bad[25, 1] = float("nan")
    bad[33, 0] = float("inf")
    strict = CovarianceAccumulator(3, layer="layer4")
    for start in range(0, 40, 10):
        strict.update(bad[start : start + 10])
    with pytest.raises(NonFiniteEmbeddingError, match=r"layer 'layer4', first in batch 2 \(2 batches affected\)"):
        strict.compute()
    lenient = CovarianceAccumulator(3, skip_nonfinite=True)
    for start in range(0, 40, 10):
        lenient.update(bad[start : start + 10])
    result = lenient.compute()
    keep = np.ones(40, dtype=bool)
    keep[[25, 33]] = False
    assert result.n_samples == 38 and result.n_skipped_nonfinite == 2
    expected = reference_eigenvalues(z.numpy()[keep])
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-10 * expected[0])


def test_few_samples_are_flagged_in_the_result_not_by_a_warning(recwarn):
    result = stream(torch.randn(5, 8, dtype=torch.float64), 5)
    assert result.sample_limited and result.max_rank == 4 and result.unobserved_dims == 4
    assert result.numerical_rank() == 4
    assert not [w for w in recwarn if "sample" in str(w.message)]


def test_update_never_modifies_the_callers_tensor():
    z = torch.randn(50, 4, dtype=torch.float64)
    before = z.clone()
    accumulator = CovarianceAccumulator(4, normalize=True)
    accumulator.update(z)
    assert torch.equal(z, before)


def test_opposite_infinities_in_one_column_are_still_caught():
    """+inf and -inf cancel to NaN in the batch mean: the cheap strict-mode check still fires."""
    z = torch.randn(12, 3, dtype=torch.float64)
    z[2, 1], z[7, 1] = float("inf"), float("-inf")
    accumulator = CovarianceAccumulator(3)
    accumulator.update(torch.randn(5, 3))
    accumulator.update(z)
    with pytest.raises(NonFiniteEmbeddingError, match=r"first in batch 1 \(1 batches affected\)"):
        accumulator.compute()
