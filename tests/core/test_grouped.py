"""Error bars (issue 11, part 5): grouped streaming, jackknife standard errors, check --max-drop-sigma."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import CovarianceAccumulator, Spectrum, spectrum
from collapse_probe.checks.verdicts import run_checks
from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.pipeline.outputs import format_table

D = 12
SCALES = torch.arange(1, D + 1, dtype=torch.float64) ** -0.75  # eigenvalues i^-1.5: a known spectrum


def gaussian(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) * SCALES + 0.5


def grouped_spectrum(z: torch.Tensor, groups: int = 20, batch: int = 40) -> Spectrum:
    acc = GroupedAccumulator(z.shape[1], groups=groups)
    for start in range(0, len(z), batch):
        acc.update(z[start : start + batch])
    return acc.compute()


def test_full_spectrum_equals_the_ungrouped_one():
    z = gaussian(1234, 0)
    plain = CovarianceAccumulator(D)
    for start in range(0, len(z), 37):
        plain.update(z[start : start + 37])
    ungrouped = plain.compute()
    grouped = grouped_spectrum(z, groups=5, batch=37)
    assert grouped.n_samples == ungrouped.n_samples == 1234
    top = float(ungrouped.eigenvalues[0])
    torch.testing.assert_close(grouped.eigenvalues, ungrouped.eigenvalues, rtol=0, atol=1e-12 * top)
    torch.testing.assert_close(grouped.mean, ungrouped.mean, rtol=0, atol=1e-12)
    assert grouped.effective_rank == pytest.approx(ungrouped.effective_rank, rel=1e-10)
    assert grouped.std_of_l2_normalized == pytest.approx(ungrouped.std_of_l2_normalized, rel=1e-10)
    assert ungrouped.stderr == {} and "rankme_se" not in ungrouped.metrics()
    assert set(grouped.stderr) == {"effective_rank", "rankme", "stable_rank", "participation_ratio", "alpha",
                                   "std_of_l2_normalized"}


def test_jackknife_matches_a_numpy_reference_on_the_groups():
    z = gaussian(600, 1)
    s = grouped_spectrum(z, groups=4, batch=50)  # batch i -> group i mod 4
    group_of_row = (torch.arange(600) // 50) % 4
    estimates = []
    for k in range(4):
        rest = z[group_of_row != k].numpy()
        eig = np.clip(np.linalg.eigvalsh(np.cov(rest, rowvar=False))[::-1], 0, None)
        p = np.sqrt(eig) / np.sqrt(eig).sum()
        estimates.append(np.exp(-(p * np.log(p)).sum()))
    estimates = np.array(estimates)
    expected = math.sqrt(3 / 4 * ((estimates - estimates.mean()) ** 2).sum())
    assert s.stderr["effective_rank"] == pytest.approx(expected, rel=1e-8)


def test_one_runs_standard_error_matches_the_spread_over_30_runs():
    """On Gaussian data with a known spectrum, each SE from one run is within 1.5x of the std over 30 runs."""
    runs = [grouped_spectrum(gaussian(2400, seed), groups=20) for seed in range(30)]
    for metric in ("effective_rank", "rankme", "alpha"):
        values = np.array([getattr(r, metric) if metric != "alpha" else r.alpha_req().alpha for r in runs])
        spread = values.std(ddof=1)
        one_run = runs[0].stderr[metric]
        assert spread / 1.5 < one_run < spread * 1.5, (metric, one_run, spread)
        typical = np.median([r.stderr[metric] for r in runs])
        assert spread / 1.25 < typical < spread * 1.25, (metric, typical, spread)


def test_stderr_round_trips_through_json_and_shows_in_the_table(tmp_path):
    s = grouped_spectrum(gaussian(800, 2), groups=4)
    loaded = Spectrum.load(s.save(tmp_path / "s.json"))
    assert loaded.stderr == s.stderr
    assert loaded.metrics()["effective_rank_se"] == s.stderr["effective_rank"]
    row = format_table({"fc": loaded}).splitlines()[1]
    assert f"{s.effective_rank:.2f} +- {s.stderr['effective_rank']:.2f}" in row
    assert "+-" not in format_table({"fc": Spectrum.from_embeddings(gaussian(100, 3))})


def test_spectrum_groups_on_a_model_and_its_errors():
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 8))
    batches = [gaussian(32, seed).float() for seed in range(12)]
    grouped = spectrum(model, batches, layers=["0", "2"], groups=6, progress=False)
    plain = spectrum(model, batches, layers=["0", "2"], progress=False)
    for name in ("0", "2"):
        top = float(plain[name].eigenvalues[0])
        torch.testing.assert_close(grouped[name].eigenvalues, plain[name].eigenvalues, rtol=0, atol=1e-10 * top)
        assert grouped[name].stderr["effective_rank"] > 0 and plain[name].stderr == {}
    with pytest.raises(CollapseProbeError, match="needs at least 20 batches, got 12"):
        spectrum(model, batches, groups=20, progress=False)
    with pytest.raises(CollapseProbeError, match="at least 2"):
        spectrum(model, batches, groups=1, progress=False)
    bad = [b.clone() for b in batches]
    bad[7][3, 0] = float("nan")  # batch 7 is group 1's second batch
    with pytest.raises(NonFiniteEmbeddingError, match="first in batch 7 "):
        spectrum(model, bad, groups=3, progress=False)
    skipped = spectrum(model, bad, groups=3, skip_nonfinite=True, progress=False)
    assert skipped.n_samples == 12 * 32 - 1 and skipped.n_skipped_nonfinite == 1


def test_grouped_merge_and_state_dict():
    z = gaussian(960, 4)
    whole, left, right = (GroupedAccumulator(D, groups=3) for _ in range(3))
    for i in range(24):
        whole.update(z[40 * i : 40 * (i + 1)])
        (left if i < 12 else right).update(z[40 * i : 40 * (i + 1)])
    left.merge(right)
    restored = GroupedAccumulator(D, groups=3)
    restored.load_state_dict(left.state_dict())
    a, b = whole.compute(), restored.compute()
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=0, atol=1e-12 * float(a.eigenvalues[0]))
    assert a.stderr == pytest.approx(b.stderr, rel=1e-8)


def _with_stderr(s: Spectrum, value: float, se: float) -> Spectrum:
    import dataclasses

    s = dataclasses.replace(s, stderr={"effective_rank": se, "rankme": se})
    object.__setattr__(s, "effective_rank", value)  # cached_property slots: a stand-in measurement
    object.__setattr__(s, "rankme", value)
    return s


def test_max_drop_sigma_fails_only_beyond_z_combined_standard_errors():
    base = Spectrum.from_embeddings(gaussian(500, 5))
    baseline = {"fc": _with_stderr(base, 10.0, 0.3)}
    small_drop = {"fc": _with_stderr(base, 9.0, 0.4)}  # 1.0 drop = 2 combined SE (0.5)
    assert all(r.passed for r in run_checks(small_drop, baseline=baseline, max_drop_sigma=3))
    assert not any(r.passed for r in run_checks(small_drop, baseline=baseline, max_drop_sigma=1.5))
    # with --max-drop too, a check fails only when the drop is larger than allowed *and* than noise
    assert all(r.passed for r in run_checks(small_drop, baseline=baseline, max_drop=0.05, max_drop_sigma=3))
    assert all(r.passed for r in run_checks(small_drop, baseline=baseline, max_drop=0.2, max_drop_sigma=1))
    failed = run_checks(small_drop, baseline=baseline, max_drop=0.05, max_drop_sigma=1)
    assert not failed[0].passed
    assert "effective_rank = 9 +- 0.4, baseline 10 +- 0.3: drop 1 = 2.00 combined SE" in failed[0].message
    with pytest.raises(CollapseProbeError, match="probe with --groups K"):
        run_checks({"fc": base}, baseline=baseline, max_drop_sigma=2)
    with pytest.raises(CollapseProbeError, match="positive number"):
        run_checks(small_drop, baseline=baseline, max_drop_sigma=-1)


def _gloo_worker(rank: int, world: int, data: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    # a file rendezvous: no free-port probe that another process could race for
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        shard = data[rank::world]
        batches = [shard[i : i + 20] for i in range(0, len(shard), 20)]
        result = spectrum(nn.Identity(), batches, groups=3, progress=False)
        torch.save({"eig": result.eigenvalues, "std": result.std_of_l2_normalized,
                    "se": torch.tensor([result.stderr[m] for m in sorted(result.stderr)])}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_sync_the_groups_and_the_normalised_moments(tmp_path):
    import torch.multiprocessing as mp

    data = gaussian(301, 6) * 3.0
    mp.spawn(_gloo_worker, args=(2, data, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert torch.equal(ranks[0]["eig"], ranks[1]["eig"]) and torch.equal(ranks[0]["se"], ranks[1]["se"])
    expected = np.clip(np.linalg.eigvalsh(np.cov(data.numpy(), rowvar=False))[::-1], 0, None)
    np.testing.assert_allclose(ranks[0]["eig"].numpy(), expected, rtol=0, atol=1e-10 * expected[0])
    unit = data / data.norm(dim=1, keepdim=True)
    assert ranks[0]["std"] == pytest.approx(float(unit.std(dim=0).mean()), rel=1e-9)
    assert bool((ranks[0]["se"] > 0).all())
