"""The per-batch kernel (collapse_probe.metrics._rank_update) against numpy float64."""

import numpy as np
import pytest
import torch

from collapse_probe.metrics._rank_update import (
    SymmetricRankUpdate,
    add_lower_gram_,
    block_size,
    merge_rows_,
    merge_unit_moments,
)


@pytest.mark.parametrize("dim, block", [(7, None), (300, 128), (300, 100), (129, 128)])
def test_lower_gram_is_exact_below_the_diagonal_and_leaves_the_upper_blocks(dim, block):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, dim))
    start = rng.standard_normal((dim, dim))
    m2 = torch.as_tensor(start.copy())
    add_lower_gram_(m2, torch.as_tensor(rows), block)
    expected = start + rows.T @ rows
    lower = np.tril_indices(dim)
    np.testing.assert_allclose(m2.numpy()[lower], expected[lower], rtol=0, atol=1e-12 * np.abs(expected).max())
    if block is None:
        np.testing.assert_allclose(m2.numpy(), expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    else:  # a block above the diagonal is never written
        np.testing.assert_array_equal(m2.numpy()[:block, block:], start[:block, block:])


def test_the_block_is_chosen_per_device():
    assert block_size(512) == 128 and block_size(2048) == 512
    assert SymmetricRankUpdate(2048, torch.device("cpu")).blocked
    assert not SymmetricRankUpdate(128, torch.device("cpu")).blocked
    assert not SymmetricRankUpdate(2048, torch.device("meta")).blocked


@pytest.mark.parametrize("block", [None, 128])
def test_two_batches_merged_by_rows_give_the_concatenated_covariance(block):
    rng = np.random.default_rng(1)
    dim = 200
    parts = [rng.standard_normal((n, dim)) * np.logspace(0, -3, dim) + 5.0 for n in (40, 90)]
    count = torch.zeros((), dtype=torch.float64)
    mean = torch.zeros(dim, dtype=torch.float64)
    m2 = torch.zeros(dim, dim, dtype=torch.float64)
    for part in parts:
        rows = torch.empty(len(part) + 1, dim, dtype=torch.float64)
        rows[:-1] = torch.as_tensor(part)
        count = merge_rows_(count, mean, m2, rows, float(len(part)), None, batch_sum=None,
                            add_gram_=lambda m, r: add_lower_gram_(m, r, block))
    z = np.concatenate(parts)
    centred = z - z.mean(axis=0)
    expected = centred.T @ centred
    assert float(count) == 130.0
    np.testing.assert_allclose(mean.numpy(), z.mean(axis=0), rtol=1e-13)
    lower = np.tril_indices(dim)
    np.testing.assert_allclose(m2.numpy()[lower], expected[lower], rtol=0, atol=1e-12 * np.abs(expected).max())


def test_dropped_rows_carry_no_weight():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((30, 4)) + 1.0
    keep = np.ones(30, dtype=bool)
    keep[[3, 17]] = False
    values = torch.as_tensor(np.where(keep[:, None], z, 0.0))
    weights = torch.as_tensor(keep, dtype=torch.float64)[:, None]
    rows = torch.cat([values, torch.zeros(1, 4, dtype=torch.float64)])
    zero = torch.zeros((), dtype=torch.float64)
    unit_mean, unit_m2 = merge_unit_moments(zero, torch.zeros(4, dtype=torch.float64),
                                            torch.zeros(4, dtype=torch.float64), rows[:-1], weights.sum(), weights,
                                            unit_rows=False)
    mean, m2 = torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    count = merge_rows_(zero, mean, m2, rows, weights.sum(), weights, batch_sum=None,
                        add_gram_=lambda m, r: add_lower_gram_(m, r, None))
    kept = z[keep]
    assert float(count) == 28.0
    np.testing.assert_allclose(m2.numpy(), np.cov(kept, rowvar=False) * 27, rtol=1e-12)
    unit = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    np.testing.assert_allclose(unit_mean.numpy(), unit.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(unit_m2.numpy(), unit.var(axis=0) * 28, rtol=1e-10)
