"""The row buffer and its checks (collapse_probe.metrics._staging)."""

import numpy as np
import torch

from collapse_probe.metrics._staging import (
    RowStage,
    can_check_by_sum,
    drop_nonfinite_rows_,
    nonfinite_flag,
    stage_capacity,
)


def test_staged_rows_and_their_sums_are_handed_over_once():
    rng = np.random.default_rng(0)
    batches = [torch.as_tensor(rng.standard_normal((n, 5))) for n in (3, 4, 2)]
    stage = RowStage(5, torch.float64, torch.device("cpu"))
    assert stage.take() is None
    flags = [stage.stage(batch, 16, normalize=False) for batch in batches]
    assert not any(bool(flag) for flag in flags)
    rows, count, sums = stage.take()
    z = torch.cat(batches)
    assert count == 9 and rows.shape == (10, 5)
    assert torch.equal(rows[:-1], z)
    np.testing.assert_allclose(sums.numpy(), z.numpy().sum(axis=0), rtol=1e-14)
    assert stage.take() is None


def test_growing_the_buffer_keeps_the_staged_rows():
    stage = RowStage(3, torch.float64, torch.device("cpu"))
    first = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    stage.stage(first, 2, normalize=False)
    assert stage.rows(50).shape[0] == 51
    rows, count, _ = stage.take()
    assert count == 2 and torch.equal(rows[:2], first)


def test_normalised_staging_and_the_nan_flag():
    stage = RowStage(2, torch.float64, torch.device("cpu"))
    stage.stage(torch.tensor([[3.0, 4.0]]), 4, normalize=True)
    bad = stage.stage(torch.tensor([[float("nan"), 1.0]]), 4, normalize=True)
    rows, _, _ = stage.take()
    assert rows[0].tolist() == [0.6, 0.8] and bool(bad)


def test_nonfinite_checks():
    big = torch.full((4, 2), torch.finfo(torch.float64).max / 2, dtype=torch.float64)
    assert not can_check_by_sum(torch.float64, 4, torch.float64)
    assert can_check_by_sum(torch.float32, 4, torch.float64)
    assert not bool(nonfinite_flag(big, torch.float64))  # the overflowing sum is no NaN
    opposite = torch.tensor([[float("inf"), 0.0], [float("-inf"), 0.0]], dtype=torch.float64)
    assert bool(nonfinite_flag(opposite, torch.float32))


def test_dropped_rows_are_zeroed_and_counted():
    values = torch.tensor([[1.0, 2.0], [float("inf"), 0.0], [3.0, float("nan")], [4.0, 5.0]], dtype=torch.float64)
    weights, kept, dropped = drop_nonfinite_rows_(values)
    assert weights[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0] and float(kept) == 2.0 and int(dropped) == 2
    assert values.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [4.0, 5.0]]


def test_stage_capacity_is_four_mib_of_rows_within_bounds():
    assert [stage_capacity(d) for d in (16, 128, 512, 2048, 8192)] == [4096, 4096, 1024, 256, 256]
