"""The accumulator's one state model: reset / merge / sync / state_dict agree, synced-ness included.

Each case here gave a wrong number or a wrong message before the state was declared once
(issue 8, rows 12 and 14); the two-process cases run over gloo on the CPU.
"""


import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from collapse_probe import (
    CollapseProbeError,
    CovarianceAccumulator,
    NonFiniteEmbeddingError,
    Spectrum,
)
from collapse_probe.metrics.covariance import STATE


def _reference(z: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(np.asarray(z, dtype=np.float64), rowvar=False))[::-1], 0, None)


def _worker(rank: int, world: int, data: torch.Tensor, out_dir: str) -> None:
    # a file rendezvous: no free-port probe that another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    report: dict = {}
    try:
        shard = data[rank::world]
        # 1. NaN in rank 1's second batch: the synced message names batch 1 on rank 1.
        acc = CovarianceAccumulator(4, layer="head")
        acc.update(shard[:10])
        bad = shard[10:20].clone()
        if rank == 1:
            bad[3, 2] = float("nan")
        acc.update(bad)
        acc.sync()
        try:
            acc.compute()
        except NonFiniteEmbeddingError as error:
            report["synced_message"] = str(error)
        # 2. reset() after sync(): a local NaN in batch 3 is reported as batch 3, no rank.
        acc.reset()
        for start in range(0, 30, 10):
            acc.update(shard[start : start + 10])
        bad = shard[30:40].clone()
        bad[0, 0] = float("inf")
        acc.update(bad)
        try:
            acc.compute()
        except NonFiniteEmbeddingError as error:
            report["after_reset_message"] = str(error)
        # 3. merge() into or from a synced accumulator is refused.
        synced = CovarianceAccumulator(4)
        synced.update(shard)
        synced.sync()
        local = CovarianceAccumulator(4)
        local.update(shard[:20])
        for target, source, label in ((synced, local, "into"), (local, synced, "from")):
            try:
                target.merge(source)
                report[f"merge_{label}"] = "merged"
            except CollapseProbeError as error:
                report[f"merge_{label}"] = str(error)
        # 4. state_dict() of a synced accumulator, loaded and synced again: n is not doubled.
        restored = CovarianceAccumulator(4)
        restored.load_state_dict(synced.state_dict())
        restored.sync()
        result = restored.compute()
        report["restored_n"] = result.n_samples
        report["restored_eigenvalues"] = result.eigenvalues
        report["synced_n"] = synced.compute().n_samples
        try:
            restored.update(shard[:5])
            report["update_after_sync"] = "accepted"
        except CollapseProbeError as error:
            report["update_after_sync"] = str(error)
        torch.save(report, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_reset_merge_and_state_dict_follow_one_state_model(tmp_path):
    data = torch.randn(100, 4, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.1], dtype=torch.float64) + 2.0
    mp.spawn(_worker, args=(2, data, str(tmp_path)), nprocs=2, join=True)
    reports = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for report in reports:
        assert "first in batch 1 on rank 1 (1 batches affected)" in report["synced_message"]
        assert "first in batch 3 (1 batches affected)" in report["after_reset_message"]
        assert "on rank" not in report["after_reset_message"]
        assert "cannot merge a synced accumulator" in report["merge_into"]
        assert "cannot merge a synced accumulator" in report["merge_from"]
        assert report["restored_n"] == report["synced_n"] == 100
        assert "reset()" in report["update_after_sync"]
        expected = _reference(data.numpy())
        np.testing.assert_allclose(report["restored_eigenvalues"].numpy(), expected, rtol=0, atol=1e-12 * expected[0])


def test_state_is_declared_once_and_every_operation_covers_it():
    """reset, state_dict and load_state_dict handle exactly the declared fields, synced included."""
    acc = CovarianceAccumulator(3)
    acc.update(torch.randn(7, 3))
    state = acc.state_dict()
    assert {field.name for field in STATE} <= set(state)
    assert state["synced"] is False and state["input_dtype"] == "float32" and state["batches_seen"] == 1
    fresh = CovarianceAccumulator(3)
    fresh.load_state_dict(state)
    for field in STATE:
        mine, theirs = getattr(acc, field.name), getattr(fresh, field.name)
        assert torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs
    acc.reset()
    blank = CovarianceAccumulator(3)
    for field in STATE:
        mine, theirs = getattr(acc, field.name), getattr(blank, field.name)
        assert torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs
    with pytest.raises(CollapseProbeError, match="state_dict"):
        fresh.load_state_dict({"dim": 3})


def test_merge_keeps_the_first_bad_batch_in_concatenation_order():
    first, second = CovarianceAccumulator(2), CovarianceAccumulator(2)
    for _ in range(3):
        first.update(torch.randn(4, 2))
    second.update(torch.randn(4, 2))
    second.update(torch.tensor([[float("nan"), 0.0], [1.0, 1.0]]))
    first.merge(second)
    with pytest.raises(NonFiniteEmbeddingError, match=r"first in batch 4 \(1 batches affected\)"):
        first.compute()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_input_near_the_dtype_maximum_is_never_called_non_finite(dtype):
    """The batch sum of finite values can overflow; that must not read as NaN/Inf input."""
    big = torch.finfo(dtype).max / 4
    z = (torch.rand(64, 3, dtype=torch.float64) + 1.0).to(dtype) * big
    accumulator = CovarianceAccumulator(3, dtype=dtype)
    accumulator.update(z)
    with pytest.raises(CollapseProbeError, match="overflows") as caught:
        accumulator.compute()
    assert not isinstance(caught.value, NonFiniteEmbeddingError)
    assert "NaN" not in str(caught.value)


def test_large_finite_float64_input_gives_the_reference_spectrum():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.1]) * 1e100
    accumulator = CovarianceAccumulator(5)
    for start in range(0, 500, 64):
        accumulator.update(torch.as_tensor(z[start : start + 64]))
    expected = _reference(z)
    np.testing.assert_allclose(accumulator.compute().eigenvalues.numpy(), expected, rtol=0, atol=1e-12 * expected[0])


def test_float64_nan_still_caught_by_the_value_by_value_check():
    z = torch.randn(20, 3, dtype=torch.float64)
    z[11, 2] = float("nan")
    accumulator = CovarianceAccumulator(3)
    accumulator.update(z[:10])
    accumulator.update(z[10:])
    with pytest.raises(NonFiniteEmbeddingError, match=r"first in batch 1 \(1 batches affected\)"):
        accumulator.compute()


def test_from_embeddings_agrees_with_the_streaming_accumulator():
    """Two independent code paths (two-pass chunks vs the streamed Chan update) give one spectrum."""
    rng = np.random.default_rng(1)
    z = torch.as_tensor(rng.standard_normal((3000, 300)) * np.logspace(0, -3, 300) + 5.0)
    batch = Spectrum.from_embeddings(z, chunk_size=1000)
    accumulator = CovarianceAccumulator(300)
    for start in range(0, 3000, 97):
        accumulator.update(z[start : start + 97])
    streamed = accumulator.compute()
    top = float(batch.eigenvalues[0])
    np.testing.assert_allclose(streamed.eigenvalues.numpy(), batch.eigenvalues.numpy(), rtol=0, atol=1e-12 * top)
    np.testing.assert_allclose(streamed.uncentered_singular_values.numpy(), batch.uncentered_singular_values.numpy(),
                               rtol=0, atol=1e-9 * float(batch.uncentered_singular_values[0]))


def test_compute_midway_then_more_updates_stays_exact_and_results_do_not_alias_the_state():
    """Rows staged for a larger CPU merge are flushed by every reader of the state; a Spectrum is
    a snapshot, not a view of the accumulator."""
    rng = np.random.default_rng(2)
    z = torch.as_tensor(rng.standard_normal((900, 40)) * np.logspace(0, -2, 40) + 1.0)
    accumulator = CovarianceAccumulator(40)
    for start in range(0, 500, 30):
        accumulator.update(z[start : min(start + 30, 500)])
    first = accumulator.compute()
    first_mean = first.mean.clone()
    state = accumulator.state_dict()
    for start in range(500, 900, 30):
        accumulator.update(z[start : start + 30])
    second = accumulator.compute()
    assert torch.equal(first.mean, first_mean)
    for result, rows in ((first, z[:500]), (second, z)):
        expected = _reference(rows.numpy())
        assert result.n_samples == len(rows)
        np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-12 * expected[0])
    assert float(state["count"]) == 500.0


def test_statistics_made_inside_inference_mode_can_be_finished_outside_it():
    accumulator = CovarianceAccumulator(3)
    with torch.inference_mode():
        accumulator.update(torch.randn(10, 3))
    accumulator.update(torch.randn(10, 3))
    assert accumulator.compute().n_samples == 20
