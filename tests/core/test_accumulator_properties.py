"""Property test: any split of the rows into batches and processes gives the reference spectrum."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from collapse_probe import CovarianceAccumulator

ROWS = 240
DATA = np.random.default_rng(11).standard_normal((ROWS, 9)) * np.logspace(0, -5, 9) + 4.0
REFERENCE = np.clip(np.linalg.eigvalsh(np.cov(DATA, rowvar=False))[::-1], 0, None)


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=ROWS - 1), max_size=12, unique=True),
    owners=st.lists(st.integers(min_value=0, max_value=2), min_size=13, max_size=13),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_any_batching_and_process_split_matches_reference(cuts, owners, seed):
    """Shuffle the rows, cut them into batches at arbitrary points, hand each batch to one of three
    'processes', merge those: the eigenvalues must not depend on any of it."""
    order = np.random.default_rng(seed).permutation(ROWS)
    chunks = np.split(DATA[order], sorted(cuts))
    parts = [CovarianceAccumulator(9) for _ in range(3)]
    for owner, chunk in zip(owners, chunks, strict=False):
        parts[owner].update(torch.as_tensor(chunk))
    merged = CovarianceAccumulator(9)
    for part in parts:  # some parts may be empty: merging those must change nothing
        merged.merge(part)
    result = merged.compute()
    assert result.n_samples == ROWS
    large = REFERENCE > 1e-8 * REFERENCE[0]
    np.testing.assert_allclose(result.eigenvalues.numpy()[large], REFERENCE[large], rtol=1e-6)
