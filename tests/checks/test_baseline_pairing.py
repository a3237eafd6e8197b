"""Issue 17 (items 1, 3, 4): check verdicts that survive a refusal, baselines that must be comparable,
paired jackknife error bars for two probes of the same images, atomic report files.

Every number is checked against numpy float64 on the same synthetic data, never against the code's
own output."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from collapse_probe.checks.reports import write_junit_xml, write_report_json
from collapse_probe.checks.summary import write_summary
from collapse_probe.checks.verdicts import CannotJudgeError, evaluate_checks, run_checks
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.results.spectrum import Spectrum

D, N, K, BATCH = 12, 2000, 10, 50
SOURCE = {"data": "synthetic", "n_images": N}


def _embeddings(seed: int = 0) -> np.ndarray:
    """N Gaussian rows with covariance eigenvalues i^-1.5."""
    return np.random.default_rng(seed).standard_normal((N, D)) * np.arange(1, D + 1) ** -0.75


def _grouped(z: np.ndarray, groups: int = K, batch: int = BATCH, **conventions) -> Spectrum:
    acc = GroupedAccumulator(z.shape[1], groups=groups, layer="fc", **conventions)
    for start in range(0, len(z), batch):
        acc.update(torch.as_tensor(z[start : start + batch]))
    return acc.compute()


def _effective_rank(z: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False)), 0, None)[::-1][: min(len(z), z.shape[1])]
    p = np.sqrt(eig) / np.sqrt(eig).sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _leave_one_group_out(z: np.ndarray, groups: int = K, batch: int = BATCH) -> np.ndarray:
    group = (np.arange(len(z)) // batch) % groups  # batch i -> group i mod K
    return np.array([_effective_rank(z[group != k]) for k in range(groups)])


def _jackknife_se(values: np.ndarray) -> float:
    k = len(values)
    return float(np.sqrt((k - 1) / k * ((values - values.mean()) ** 2).sum()))


@pytest.fixture(scope="module")
def pair():
    """A baseline and a slightly worse model on the *same* rows: the last 4 dims shrunk by 2%."""
    z = _embeddings()
    worse = z * np.r_[np.ones(8), np.full(4, 0.98)]
    return z, worse, _grouped(z), _grouped(worse)


def test_the_grouped_accumulator_saves_each_leave_one_group_out_value(pair):
    z, _, base, _ = pair
    record = base.extra["jackknife"]
    np.testing.assert_allclose(record["replicates"]["effective_rank"], _leave_one_group_out(z), rtol=1e-10)
    assert (record["groups"], record["assignment"]) == (K, "batch i -> group i mod K")
    assert record["group_sizes"] == [N // K] * K and record["group_batches"] == [N // K // BATCH] * K
    assert base.stderr["effective_rank"] == pytest.approx(_jackknife_se(_leave_one_group_out(z)), rel=1e-10)
    # kept through JSON; a file written before replicates were saved still loads
    assert Spectrum.from_dict(json.loads(json.dumps(base.to_dict()))).extra == base.extra
    old = base.to_dict()
    old["extra"] = {}
    assert Spectrum.from_dict(old).stderr == base.stderr


def test_max_drop_sigma_uses_the_paired_jackknife_of_the_difference(pair):
    z, worse, base, new = pair
    a, b = _leave_one_group_out(worse), _leave_one_group_out(z)
    paired, combined = _jackknife_se(b - a), math.hypot(_jackknife_se(a), _jackknife_se(b))
    drop = _effective_rank(z) - _effective_rank(worse)
    assert drop / paired > 500 and drop / combined < 0.5  # measured: 577 paired SE, 0.40 combined
    run = evaluate_checks({"fc": new}, baseline={"fc": base}, max_drop_sigma=3, source=SOURCE, baseline_source=SOURCE)
    result = next(r for r in run.results if r.metric == "effective_rank")
    assert (result.error_bars, result.passed) == ("paired", False)
    assert result.se == pytest.approx(paired, rel=1e-8)
    assert result.bound == pytest.approx(_effective_rank(z) - 3 * paired, rel=1e-10)
    assert f"= {drop / paired:.2f} paired SE" in result.message and "same data and groups" in result.message
    assert run.warnings == []
    # the same spectra without a record that they saw the same data: the old, combined error, said so
    run = evaluate_checks({"fc": new}, baseline={"fc": base}, max_drop_sigma=3)
    result = next(r for r in run.results if r.metric == "effective_rank")
    assert (result.error_bars, result.passed) == ("unpaired", True)
    assert result.se == pytest.approx(combined, rel=1e-8)
    assert f"= {drop / combined:.2f} combined SE" in result.message and "unpaired: the data" in result.message
    (warning,) = run.warnings
    assert warning.startswith("max-drop-sigma [fc]: unpaired error bars, the data this run and the baseline were "
                              "probed on is not recorded")


def _unpaired_why(new: Spectrum, base: Spectrum, source=SOURCE, baseline_source=SOURCE) -> str:
    run = evaluate_checks({"fc": new}, baseline={"fc": base}, max_drop_sigma=3, source=source,
                          baseline_source=baseline_source)
    assert {r.error_bars for r in run.results} == {"unpaired"}
    return run.results[0].detail


def test_error_bars_stay_unpaired_unless_groups_and_data_match(pair):
    z, worse, base, _ = pair
    assert "different groups (groups: baseline 10, this run 8; group_sizes" in _unpaired_why(_grouped(worse, groups=8), base)
    # same K and samples per group, other batches: group k holds other rows
    other_batches = _grouped(worse, batch=25)
    assert other_batches.extra["jackknife"]["group_sizes"] == base.extra["jackknife"]["group_sizes"]
    assert "group_batches: baseline [4, 4, 4, 4, 4, 4, ... (10 in all)], this run [8, 8" in _unpaired_why(other_batches, base)
    assert "different data (baseline data='val/', this run data='synthetic')" in _unpaired_why(
        _grouped(worse), base, baseline_source={"data": "val/", "n_images": N})
    legacy = dataclasses.replace(base, extra={})
    assert "the baseline holds no jackknife replicates" in _unpaired_why(_grouped(worse), legacy)


def test_a_baseline_of_other_conventions_or_dimension_is_refused():
    z = torch.as_tensor(_embeddings())
    plain = Spectrum.from_embeddings(z, layer="embedding")
    with pytest.raises(CollapseProbeError, match=r"^baseline 'embedding' was made with normalize=True, this run with "
                                                 r"normalize=False: a drop is only meaningful"):
        run_checks({"embedding": plain}, baseline={"embedding": Spectrum.from_embeddings(z, normalize=True)}, max_drop=0.1)
    with pytest.raises(CollapseProbeError, match=r"^baseline 'embedding' was made with center=False, ddof=0, this run "
                                                 r"with center=True, ddof=1"):
        run_checks({"embedding": plain}, baseline={"embedding": Spectrum.from_embeddings(z, center=False)}, max_drop=0.1)
    half = Spectrum.from_embeddings(z[:, : D // 2])
    with pytest.raises(CollapseProbeError, match=r"^baseline 'embedding' was made with dim=12, this run with dim=6"):
        run_checks({"embedding": half}, baseline={"embedding": plain}, max_drop=0.5)


def test_a_baseline_of_another_sample_count_is_a_warning():
    z = torch.as_tensor(_embeddings())
    full, tenth, half = (Spectrum.from_embeddings(z[:n]) for n in (N, N // 10, N // 2))
    run = evaluate_checks({"fc": tenth}, baseline={"fc": full}, max_drop=0.5)
    assert [r.passed for r in run.results] == [True, True]
    assert run.warnings == ["max-drop [fc]: the baseline has 2000 samples, this run 200 (10x fewer): effective rank "
                            "and RankMe change with the sample count, so part of any difference is the count's; probe "
                            "both on the same images (--max-samples)"]
    assert evaluate_checks({"fc": half}, baseline={"fc": full}, max_drop=0.5).warnings == []  # exactly 2x: no warning


def test_a_judged_fail_survives_a_bound_that_cannot_be_judged():
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((20, 64))  # 20 samples show 19 of 64 dims
    narrow = rng.standard_normal((20, 1)) * np.ones(4)  # rank 1 of 4: a collapse 20 samples do show
    spectra = {"wide": Spectrum.from_embeddings(torch.as_tensor(wide)),
               "narrow": Spectrum.from_embeddings(torch.as_tensor(narrow))}
    run = evaluate_checks(spectra, min_effective_rank=19.5)  # above the 19 dims 20 samples can show
    (failed,) = run.results
    assert (failed.layer, failed.passed) == ("narrow", False)
    assert failed.value == pytest.approx(_effective_rank(narrow), abs=1e-6) and abs(failed.value - 1) < 1e-6
    (refusal,) = run.refusals
    assert (refusal.layer, refusal.needed_samples, refusal.n_samples) == ("wide", 65, 20)
    # rel 1e-6: the 20th eigenvalue is round-off (~1e-15 of the largest), and its square root enters the entropy
    assert refusal.value == pytest.approx(_effective_rank(wide), rel=1e-6) and refusal.value < 19
    assert run.verdict == "fail"
    with pytest.raises(CannotJudgeError) as info:  # the Python API still raises, carrying what was judged
        run_checks(spectra, min_effective_rank=19.5)
    assert info.value.results == [failed] and info.value.needed_samples == 65
    assert evaluate_checks({"wide": spectra["wide"]}, min_effective_rank=19.5).verdict == "cannot judge"


def _half_then_crash(self: Path, data, *args, **kwargs):
    """A write that dies half-way (a full disk, a killed process): half the bytes, then an error."""
    raw = data.encode() if isinstance(data, str) else data
    with open(self, "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("writer", ["json", "junit", "summary"])
def test_a_crash_while_writing_a_report_leaves_the_old_one_whole(tmp_path, monkeypatch, writer):
    results = run_checks({"fc": Spectrum.from_embeddings(torch.as_tensor(_embeddings()))}, min_effective_rank=2)
    target = tmp_path / f"report.{writer}"
    target.write_text("the whole old report")
    write = {"json": lambda: write_report_json(target, results), "junit": lambda: write_junit_xml(target, results),
             "summary": lambda: write_summary("### collapse-probe check: PASS", target, step_summary=False)}[writer]
    monkeypatch.setattr(Path, "write_text", _half_then_crash)
    monkeypatch.setattr(Path, "write_bytes", _half_then_crash)
    with pytest.raises(OSError, match="No space"):
        write()
    assert target.read_text() == "the whole old report"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left behind
    monkeypatch.undo()
    write()
    assert target.read_text() != "the whole old report" and [p.name for p in tmp_path.iterdir()] == [target.name]
