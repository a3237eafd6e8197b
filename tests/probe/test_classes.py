"""Per-class spectra, within/between-class statistics and NC1 (issue 18 parts 3-4), against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe import spectrum
from collapse_probe.errors import CollapseProbeError
from collapse_probe.results.classes import ClassSpectra


def _data(n=600, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    centres = rng.standard_normal((k, d)) * 3
    scales = np.linspace(1.0, 0.05, k)  # class 3 nearly collapsed
    z = centres[y] + rng.standard_normal((n, d)) * scales[y, None] * np.logspace(0, -1, d)
    return torch.from_numpy(z), torch.from_numpy(y)


def _numpy_eigenvalues(rows):
    return np.linalg.eigvalsh(np.cov(rows, rowvar=False, ddof=1))[::-1]


def _numpy_scatter(z, y):
    """Papyan et al.'s statistics in numpy, written from the definitions."""
    classes = np.unique(y)
    mu = z.mean(axis=0)
    means = np.stack([z[y == k].mean(axis=0) for k in classes])
    within = sum((z[y == k] - means[i]).T @ (z[y == k] - means[i]) for i, k in enumerate(classes))
    sigma_w = within / len(z)
    sigma_b = (means - mu).T @ (means - mu) / len(classes)
    nc1 = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-12)) / len(classes)
    return (np.linalg.eigvalsh(within / (len(z) - len(classes)))[::-1], np.linalg.eigvalsh(sigma_b)[::-1], nc1)


def test_per_class_spectra_and_scatter_equal_numpy():
    z, y = _data()
    loader = DataLoader(TensorDataset(z, y), batch_size=64)
    result = spectrum(nn.Identity(), loader, per_class=True, class_scatter=True, progress=False)
    assert isinstance(result, ClassSpectra)
    zn, yn = z.numpy(), y.numpy()
    pooled = _numpy_eigenvalues(zn)
    np.testing.assert_allclose(result.pooled.eigenvalues.numpy(), pooled, rtol=0, atol=1e-9 * pooled[0])
    assert sorted(result.classes) == ["0", "1", "2", "3"]
    for label, s in result.classes.items():
        rows = zn[yn == int(label)]
        expected = _numpy_eigenvalues(rows)
        assert s.n_samples == len(rows)
        np.testing.assert_allclose(s.eigenvalues.numpy(), expected, rtol=0, atol=1e-9 * expected[0])
    within, between, nc1 = _numpy_scatter(zn, yn)
    scatter = result.scatter
    np.testing.assert_allclose(scatter.within_eigenvalues.numpy(), within, rtol=0, atol=1e-9 * within[0])
    np.testing.assert_allclose(scatter.between_eigenvalues.numpy(), np.clip(between, 0, None), rtol=0,
                               atol=1e-9 * between[0])
    assert scatter.nc1 == pytest.approx(nc1, rel=1e-9) and scatter.n_classes == 4
    worst = result.worst("effective_rank")
    assert worst[0] == min(result.classes, key=lambda k: result.classes[k].effective_rank)
    assert result.to_dict()["worst"]["effective_rank"]["class"] == worst[0]


def test_scatter_alone_for_many_classes_and_dict_batches():
    z, y = _data(n=3000, d=5, k=300, seed=1)
    batches = [{"x": z[i:i + 500], "label": y[i:i + 500]} for i in range(0, 3000, 500)]
    result = spectrum(nn.Identity(), batches, class_scatter=True, progress=False)
    assert result.classes == {} and result.scatter.n_classes == len(np.unique(y.numpy()))
    within, _, nc1 = _numpy_scatter(z.numpy(), y.numpy())
    np.testing.assert_allclose(result.scatter.within_eigenvalues.numpy(), within, rtol=0, atol=1e-9 * within[0])
    assert result.scatter.nc1 == pytest.approx(nc1, rel=1e-8)


def test_per_class_over_the_budget_is_refused_before_any_batch_runs():
    z, y = _data(n=64, d=32, k=4)
    dataset = TensorDataset(z, y)
    dataset.classes = [f"c{i}" for i in range(1000)]  # what an ImageFolder declares
    calls = []
    model = nn.Identity()
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(CollapseProbeError, match=r"1000 classes at d = 32 need 0\.0 GiB|need") as error:
        spectrum(model, DataLoader(dataset, batch_size=16), per_class=True, class_memory_budget=1_000_000,
                 progress=False)
    assert "classes=" in str(error.value) and "\n" not in str(error.value)
    # refused on the first batch, before any statistics: exactly one forward (to learn d), nothing accumulated
    assert len(calls) == 1


def test_per_class_needs_labels_and_a_class_subset_keeps_only_those():
    with pytest.raises(CollapseProbeError, match="need class labels"):
        spectrum(nn.Identity(), [torch.randn(8, 3)], per_class=True, progress=False)
    z, y = _data()
    result = spectrum(nn.Identity(), [(z, y)], per_class=True, classes=(1, 3), progress=False)
    assert sorted(result.classes) == ["1", "3"] and result.pooled.n_samples == len(z)


def _gloo_worker(rank: int, world: int, z: torch.Tensor, y: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        shard = [(z[i:i + 50], y[i:i + 50]) for i in range(rank * 50, len(z), world * 50)]
        if rank == 1:
            shard = [(a[b != 3], b[b != 3]) for a, b in shard]  # rank 1 never sees class 3
        result = spectrum(nn.Identity(), shard, per_class=True, class_scatter=True, progress=False)
        tokens = spectrum(nn.Identity(), [z[rank::world].reshape(-1, 4, z.shape[1])], tokens="all", progress=False)
        torch.save({"classes": {k: s.eigenvalues for k, s in result.classes.items()},
                    "within": result.scatter.within_eigenvalues, "nc1": result.scatter.nc1,
                    "tokens": tokens.eigenvalues, "norms_n": tokens.extra["token_norms"]["n"]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_one_process_numbers(tmp_path):
    import torch.multiprocessing as mp

    z, y = _data(n=800)
    mp.spawn(_gloo_worker, args=(2, z, y, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # one process on the same rows (rank 1's batches without class 3)
    keep = torch.ones(len(z), dtype=torch.bool)
    for start in range(50, len(z), 100):
        keep[start:start + 50] &= y[start:start + 50] != 3
    single = spectrum(nn.Identity(), [(z[keep], y[keep])], per_class=True, class_scatter=True, progress=False)
    assert sorted(ranks[0]["classes"]) == sorted(single.classes) == ["0", "1", "2", "3"]
    for label, s in single.classes.items():
        top = float(s.eigenvalues[0])
        for r in ranks:
            np.testing.assert_allclose(r["classes"][label].numpy(), s.eigenvalues.numpy(), rtol=0, atol=1e-9 * top)
    top = float(single.scatter.within_eigenvalues[0])
    np.testing.assert_allclose(ranks[1]["within"].numpy(), single.scatter.within_eigenvalues.numpy(), rtol=0,
                               atol=1e-9 * top)
    assert ranks[0]["nc1"] == pytest.approx(single.scatter.nc1, rel=1e-9) == ranks[1]["nc1"]
    rows = torch.cat([z[0::2].reshape(-1, z.shape[1]), z[1::2].reshape(-1, z.shape[1])]).numpy()
    expected = _numpy_eigenvalues(rows)
    np.testing.assert_allclose(ranks[1]["tokens"].numpy(), expected, rtol=0, atol=1e-9 * expected[0])
    assert ranks[0]["norms_n"] == ranks[1]["norms_n"] == len(z)
