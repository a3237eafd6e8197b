"""LiDAR, streamed: equal to an in-memory numpy float64 implementation of stable-pretraining's
formula (written here from its callback's source), batch-size and split invariant, over gloo too."""


import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from collapse_probe import CollapseProbeError, LidarAccumulator, NonFiniteEmbeddingError, lidar
from collapse_probe.data.views import open_views

DELTA, EPS = 1e-4, 1e-8


def views_data(c: int = 240, q: int = 5, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Class means on a decaying spectrum far from the origin, anisotropic view noise: (C, q, d)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, 1, d, generator=g, dtype=torch.float64) * torch.logspace(0, -3, d, dtype=torch.float64) + 50.0
    noise = torch.randn(c, q, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 0.01, d, dtype=torch.float64)
    return (means + noise).float()


def assert_matches(result, z: torch.Tensor, reference_lidar) -> None:
    values, score = reference_lidar(z.double().numpy())
    top = float(values[0])
    np.testing.assert_allclose(result.eigenvalues.numpy(), values, rtol=0, atol=1e-9 * top)
    assert result.lidar == pytest.approx(score, rel=1e-9)
    assert result.n_classes == z.shape[0] and result.views == z.shape[1]


@pytest.mark.parametrize("batch", [1, 7, 64, 240])
def test_accumulator_equals_reference_for_any_batch_size(batch, reference_lidar):
    z = views_data()
    acc = LidarAccumulator(z.shape[2], views=z.shape[1])
    for start in range(0, z.shape[0], batch):
        acc.update(z[start : start + batch])
    assert_matches(acc.compute(), z, reference_lidar)


def test_merge_of_uneven_splits_equals_reference_and_state_dict_round_trips(reference_lidar):
    z = views_data(c=101, q=3, d=9, seed=1)
    parts = [LidarAccumulator(9, views=3) for _ in range(3)]
    for acc, rows in zip(parts, (z[:10], z[10:11], z[11:]), strict=True):
        acc.update(rows)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert_matches(parts[0].compute(), z, reference_lidar)
    restored = LidarAccumulator(9, views=3)
    restored.load_state_dict(parts[0].state_dict())
    assert torch.equal(restored.compute().eigenvalues, parts[0].compute().eigenvalues)
    restored.reset()
    restored.update(z[:4])
    assert restored.compute().n_classes == 4


def test_scores_healthy_near_dim_and_collapsed_near_one():
    g = torch.Generator().manual_seed(2)
    means = torch.randn(400, 1, 6, generator=g, dtype=torch.float64)
    healthy = means + 0.05 * torch.randn(400, 4, 6, generator=g, dtype=torch.float64)
    acc = LidarAccumulator(6, views=4)
    acc.update(healthy)
    assert acc.compute().lidar > 5.9
    acc.reset()
    acc.update(means * 0 + 0.05 * torch.randn(400, 4, 6, generator=g, dtype=torch.float64)
               + means[..., :1] * torch.eye(6, dtype=torch.float64)[0])
    result = acc.compute()
    assert result.lidar < 2.5 and result.max_rank == 6 and not result.sample_limited


def test_refusals():
    with pytest.raises(CollapseProbeError, match="at least 2 views"):
        LidarAccumulator(4, views=1)
    acc = LidarAccumulator(4, views=3)
    with pytest.raises(CollapseProbeError, match=r"\(batch, views=3, 4\)"):
        acc.update(torch.randn(5, 2, 4))
    with pytest.raises(CollapseProbeError, match="views=2"):
        acc.merge(LidarAccumulator(4, views=2))
    acc.update(torch.randn(1, 3, 4))
    with pytest.raises(CollapseProbeError, match="at least 2 samples"):
        acc.compute()
    bad = torch.randn(4, 3, 4)
    bad[2, 1, 0] = float("nan")
    acc.update(bad)
    with pytest.raises(NonFiniteEmbeddingError, match="batch 1"):
        acc.compute()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8))


def _reference_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        flat = x.flatten(0, 1)
        hidden = model[0](flat)
        return {"0": hidden.reshape(*x.shape[:2], -1), "2": model(flat).reshape(*x.shape[:2], -1)}


@pytest.mark.parametrize("batch", [5, 64])
def test_lidar_of_a_model_equals_reference_on_its_outputs(batch, reference_lidar):
    x = torch.randn(150, 4, 6)
    model = _model()
    loader = [(x[i : i + batch], torch.zeros(len(x[i : i + batch]))) for i in range(0, len(x), batch)]
    result = lidar(model, loader, views=4, layers=["0", "2"], progress=False)
    for name, z in _reference_outputs(model, x).items():
        assert_matches(result[name], z, reference_lidar)
    assert lidar(model, loader, views=4, progress=False).eigenvalues.shape == (8,)
    with pytest.raises(CollapseProbeError, match="views=3"):
        lidar(model, loader, views=3, progress=False)


def _worker(rank: int, world: int, x: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    # a file rendezvous: no free-port probe that another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        shard = x[rank::world]  # uneven: 151 samples over 2 ranks
        result = lidar(_model(), [shard[i : i + 13] for i in range(0, len(shard), 13)], views=4,
                       layers=["0", "2"], progress=False)
        lopsided = lidar(_model(), [x] if rank == 0 else [], views=4, progress=False)  # rank 1 has no data
        acc = LidarAccumulator(6, views=4)
        acc.update(shard)
        acc.sync()
        synced = acc.compute()
        torch.save({"0": result["0"].eigenvalues, "2": result["2"].eigenvalues, "score": result["2"].lidar,
                    "lopsided": lopsided.eigenvalues, "raw": synced.eigenvalues, "n": synced.n_classes},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()



def test_two_gloo_processes_match_the_single_process_reference(tmp_path, reference_lidar):
    x = torch.randn(151, 4, 6) * torch.linspace(2, 0.2, 6) + 1.0
    mp.spawn(_worker, args=(2, x, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in ("0", "2", "lopsided", "raw", "score"):
        assert torch.equal(torch.as_tensor(ranks[0][key]), torch.as_tensor(ranks[1][key])), key
    outputs = _reference_outputs(_model(), x) | {"raw": x}
    for key, z in (("0", outputs["0"]), ("2", outputs["2"]), ("lopsided", outputs["2"]), ("raw", x)):
        values, score = reference_lidar(z.double().numpy())
        np.testing.assert_allclose(ranks[0][key].numpy(), values, rtol=0, atol=1e-9 * values[0])
    assert ranks[0]["score"] == pytest.approx(reference_lidar(outputs["2"].double().numpy())[1], rel=1e-9)
    assert ranks[0]["n"] == 151


def test_views_are_seeded_per_image_not_per_batch():
    def views(batch_size: int, seed: int) -> torch.Tensor:
        return torch.cat(list(open_views("builtin:digits", views=3, image_size=12, batch_size=batch_size,
                                         max_samples=6, seed=seed)))

    first = views(6, seed=0)
    assert first.shape == (6, 3, 3, 12, 12)
    assert torch.equal(first, views(4, seed=0))
    assert not torch.equal(first, views(6, seed=1))
    assert not torch.equal(first[:, 0], first[:, 2])  # the views differ from one another


def test_view_shards_hold_each_image_once_with_its_unsharded_views():
    def views(**shard) -> torch.Tensor:
        return torch.cat(list(open_views("builtin:digits", views=2, image_size=12, batch_size=4, max_samples=7,
                                         **shard)))

    whole = views()
    shards = [views(rank=rank, world_size=3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    for rank, shard in enumerate(shards):
        assert torch.equal(shard, whole[rank::3])


def test_equals_stable_pretrainings_own_callback_when_installed():
    lidar_module = pytest.importorskip("stable_pretraining.callbacks.lidar")
    z = views_data(c=60, q=5, d=12, seed=3)
    callback = lidar_module.LiDAR.__new__(lidar_module.LiDAR)
    callback.name, callback.n_classes, callback.samples_per_class = "lidar", 60, 5
    callback.delta, callback.epsilon = DELTA, EPS
    theirs = callback._compute_lidar(z.double().reshape(-1, 12))
    acc = LidarAccumulator(12, views=5)
    acc.update(z)
    assert acc.compute().lidar == pytest.approx(theirs["lidar"], rel=1e-6)
