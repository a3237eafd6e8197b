"""state_dicts written by an earlier version still load and give the same numbers.

``data/accumulator_v3_states.pt`` holds the ``state_dict()`` of the accumulators that
:func:`build_accumulators` makes, written by the code of commit e5dcb1b (before covariance.py was
split into the accumulator, the rank-k kernel and the staging buffer)::

    torch.save({name: acc.state_dict() for name, acc in build_accumulators().items()}, path)

Each case takes a different path of the update: staged small batches and one batch larger than
the stage (direct merge), the blocked lower-triangle kernel (d above one block), dropped
non-finite rows with normalisation, and the uncentred convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from collapse_probe import CovarianceAccumulator

FIXTURE = Path(__file__).parent / "data" / "accumulator_v3_states.pt"


def _data(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.logspace(0, -3, d) + 2.0


def _batches(z: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    edges = np.cumsum(sizes)[:-1]
    return np.split(z, edges)


CASES = {
    # name: (constructor keywords, seed, rows, dim, batch sizes, input dtype, NaN at (row, col) or None)
    "staged_and_direct": ({}, 0, 5185, 24, [37] * 5 + [5000], np.float32, None),
    "blocked": ({}, 1, 900, 130, [300, 64, 536], np.float64, None),
    "skip_nonfinite_normalized": ({"skip_nonfinite": True, "normalize": True, "layer": "head"}, 2, 60, 5,
                                  [10, 10, 10, 30], np.float64, (25, 3)),
    "uncentred": ({"center": False}, 3, 40, 3, [16, 24], np.float32, None),
}


def case_rows(name: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The batches of one case, and its rows as the reference sees them (float64, NaN rows dropped)."""
    _, seed, n, d, sizes, dtype, nan_at = CASES[name]
    z = _data(seed, n, d).astype(dtype)
    if nan_at is not None:
        z[nan_at] = np.nan
    kept = z[np.isfinite(z).all(axis=1)].astype(np.float64)
    return _batches(z, sizes), kept


def build_accumulators() -> dict[str, CovarianceAccumulator]:
    accumulators = {}
    for name, (kwargs, _, _, d, _, _, _) in CASES.items():
        accumulator = CovarianceAccumulator(d, **kwargs)
        for batch in case_rows(name)[0]:
            accumulator.update(torch.as_tensor(batch))
        accumulators[name] = accumulator
    return accumulators


def _reference(name: str) -> tuple[int, np.ndarray]:
    kwargs = CASES[name][0]
    z = case_rows(name)[1]
    if kwargs.get("normalize"):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    if kwargs.get("center", True):
        cov = np.cov(z, rowvar=False, ddof=1)
    else:
        cov = z.T @ z / z.shape[0]
    return z.shape[0], np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


@pytest.fixture(scope="module")
def saved() -> dict[str, dict]:
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_state_dict_loads_and_gives_the_reference_spectrum(saved, name):
    kwargs, _, _, d, _, _, _ = CASES[name]
    accumulator = CovarianceAccumulator(d, **kwargs)
    accumulator.load_state_dict(saved[name])
    result = accumulator.compute()
    n, expected = _reference(name)
    assert result.n_samples == n
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-12 * expected[0])
    if kwargs.get("skip_nonfinite"):
        assert result.n_skipped_nonfinite == 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_state_dict_round_trips_unchanged(saved, name):
    """Loading then saving again gives the same keys, values and types: the format did not move."""
    kwargs, _, _, d, _, _, _ = CASES[name]
    accumulator = CovarianceAccumulator(d, **kwargs)
    accumulator.load_state_dict(saved[name])
    again = accumulator.state_dict()
    assert set(again) == set(saved[name])
    for key, value in saved[name].items():
        if isinstance(value, torch.Tensor):
            assert again[key].dtype == value.dtype and torch.equal(again[key], value), key
        else:
            assert type(again[key]) is type(value) and again[key] == value, key


@pytest.mark.parametrize("name", sorted(CASES))
def test_todays_code_writes_the_saved_state(saved, name):
    """The same stream today gives the saved state: counts and flags exactly, the moments to
    round-off (M2's lower triangle, the part every reader uses)."""
    state = build_accumulators()[name].state_dict()
    old = saved[name]
    assert set(state) == set(old)
    for key, value in old.items():
        if not isinstance(value, torch.Tensor):
            assert state[key] == value, key
        elif value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            mine, theirs = (torch.tril(t) if key == "m2" else t for t in (state[key], value))
            np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-13 * scale, err_msg=key)
        else:
            assert torch.equal(state[key], value), key


def test_fixture_then_more_rows_resumes_exactly(saved):
    """A saved state resumed with more batches equals the reference on all the rows."""
    name = "blocked"
    kwargs, _, _, d, _, _, _ = CASES[name]
    accumulator = CovarianceAccumulator(d, **kwargs)
    accumulator.load_state_dict(saved[name])
    extra = _data(9, 400, d)
    for start in range(0, 400, 100):
        accumulator.update(torch.as_tensor(extra[start : start + 100]))
    z = np.concatenate([case_rows(name)[1], extra])
    expected = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1], 0.0, None)
    result = accumulator.compute()
    assert result.n_samples == 1300
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-12 * expected[0])
