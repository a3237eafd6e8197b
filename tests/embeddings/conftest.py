"""Shared helpers of the embeddings-on-disk tests: data, the numpy reference, the CLI runner."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_probe._utils.threads import single_threaded


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices on shared cores: one intra-op thread (no oversubscription stalls)."""
    with single_threaded():
        yield


def sample(rows: int = 1000, dim: int = 12, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Anisotropic Gaussian rows with a non-zero mean (so centring matters)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, dim)) * np.geomspace(3.0, 0.05, dim) + rng.standard_normal(dim)
    return z.astype(dtype)


def reference_eigenvalues(z: np.ndarray, center: bool = True) -> np.ndarray:
    """numpy float64, independent of collapse_probe: eigenvalues of the covariance (ddof 1) or of
    Z^T Z / N, descending."""
    z = np.asarray(z, dtype=np.float64)
    matrix = np.cov(z, rowvar=False) if center else z.T @ z / len(z)
    return np.linalg.eigvalsh(np.atleast_2d(matrix))[::-1]


def assert_matches(spectrum, z: np.ndarray, center: bool = True, tol: float = 1e-9) -> None:
    """Every eigenvalue within ``tol`` of the largest, and N, against numpy on the rows ``z``."""
    expected = reference_eigenvalues(z, center)
    got = spectrum.eigenvalues.numpy()
    assert spectrum.n_samples == len(z)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol * expected[0])


def error_line(stderr: str) -> str:
    """The one line of a refusal (asserting there is exactly one)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def emb():
    """The helpers above: ``emb.sample``, ``emb.reference``, ``emb.assert_matches``, ``emb.error_line``."""
    from types import SimpleNamespace

    return SimpleNamespace(sample=sample, reference=reference_eigenvalues, assert_matches=assert_matches,
                           error_line=error_line)
