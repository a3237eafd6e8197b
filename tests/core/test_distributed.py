"""Two CPU processes over gloo give the single-process (numpy) result, identical on every rank."""


import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, world: int, data: torch.Tensor, out_dir: str) -> None:
    # a file rendezvous: no free-port probe that another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        from collapse_probe import spectrum

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12))
        shard = data[rank::world]  # uneven shards on purpose: 301 rows over 2 ranks
        batches = [shard[i : i + 17] for i in range(0, len(shard), 17)]
        result = spectrum(model, batches, layers=["0", "2"], progress=False)
        lopsided = spectrum(model, [data] if rank == 0 else [], progress=False)  # rank 1 has no data
        torch.save(
            {k: v.eigenvalues for k, v in result.items()} | {"n": result["2"].n_samples, "lopsided": lopsided.eigenvalues},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_single_process_reference(tmp_path):
    data = torch.randn(301, 6) * torch.linspace(3, 0.1, 6) + 1.0
    mp.spawn(_worker, args=(2, data, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12)).eval()
    with torch.no_grad():
        hidden = model[0](data).numpy().astype(np.float64)
        output = model(data).numpy().astype(np.float64)
    for layer, z in (("0", hidden), ("2", output)):
        expected = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1], 0, None)
        large = expected > 1e-8 * expected[0]
        np.testing.assert_allclose(results[0][layer].numpy()[large], expected[large], rtol=1e-6)
        assert torch.equal(results[0][layer], results[1][layer])
    assert results[0]["n"] == results[1]["n"] == 301
    assert torch.equal(results[0]["lopsided"], results[1]["lopsided"])
    top = float(results[0]["2"][0])  # tolerances relative to the largest eigenvalue, never to tiny ones
    np.testing.assert_allclose(results[1]["lopsided"].numpy(), results[0]["2"].numpy(), rtol=0, atol=1e-9 * top)
