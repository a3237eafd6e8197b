"""Two gloo processes, each reading its share of the rows (one file splits too), equal one process."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, folder: str, out: str) -> None:
    # a file rendezvous, set up before the library looks: no free-port probe another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from collapse_probe_cli.errors import run_cli
        from collapse_probe_cli.main import cli

        from collapse_probe.embeddings import make_options, read_part

        results = {}
        for name, source in (("shards", folder), ("one_file", f"{folder}/e_1.npy")):
            state = read_part(source, make_options(progress=False, memory_budget="64kB"))
            spectrum = state.spectrum()
            results[name] = {"eigenvalues": spectrum.eigenvalues, "n": spectrum.n_samples,
                             "rows": state.provenance["rows"], "norms": state.provenance["norms"]["rows_checked"],
                             "shards": [r["read"] for r in state.provenance["shards"]]}
        code = run_cli(cli, ["embeddings", folder, "--quiet", "--memory-budget", "64kB",
                             "--save-state", f"{out}/cli_state.pt", "--out", f"{out}/cli_out"])
        results["cli_code"] = code
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path, emb):
    z = emb.sample(3001, dim=9)
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 3001)]):
        np.save(folder / f"e_{i}.npy", z[lo:hi])
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_worker, args=(2, str(folder), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]

    from collapse_probe.embeddings import embeddings_spectrum, load_state, merge_states

    for name, rows in (("shards", z), ("one_file", z[1000:])):
        single = embeddings_spectrum(folder if name == "shards" else folder / "e_1.npy", progress=False)
        top = float(single.eigenvalues[0])
        for result in ranks:
            assert result[name]["n"] == len(rows) == result[name]["rows"] == result[name]["norms"]
            np.testing.assert_allclose(result[name]["eigenvalues"].numpy(), single.eigenvalues.numpy(),
                                       rtol=0, atol=1e-12 * top)
        assert torch.equal(ranks[0][name]["eigenvalues"], ranks[1][name]["eigenvalues"])
        emb.assert_matches(single, rows)
    assert ranks[0]["shards"]["shards"] == [[[0, 1000]], [[0, 2001]]]  # every rank's rows, not rank 0's
    assert ranks[0]["cli_code"] == ranks[1]["cli_code"] == 0
    assert (out / "cli_out" / "spectrum.json").is_file()
    state = load_state(out / "cli_state.pt")
    assert state["provenance"]["world_size"] == 2 and state["provenance"]["rows"] == 3001
    merged = merge_states([out / "cli_state.pt"])  # a synced state is one mergeable part
    emb.assert_matches(merged, z)
