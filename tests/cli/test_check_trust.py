"""`collapse-probe check` that can be trusted (issue 17 items 1, 3, 4 and the check reports of 12):
a judged FAIL is never lost to a bound that cannot be judged, a baseline must be comparable, two
probes of the same images get paired error bars, and every report is written atomically."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe.data.images import open_images
from collapse_probe.pipeline.outputs import ProbeResult, write_outputs
from collapse_probe.results.spectrum import Spectrum

#: builtin:digits at 8 x 8 pixels: 355 images (the val split), probed in a second.
DIGITS = ["--data", "builtin:digits", "--image-size", "8", "--workers", "0", "--quiet", "--trust-checkpoint"]


def _wide_and_narrow(scale_rows: float = 1.0) -> nn.Sequential:
    """flatten -> ``wide`` Linear(192, 64) -> ``narrow`` Linear(64, 4) of rank 1 (a collapse).

    ``scale_rows < 1`` shrinks the wide layer's output rows linearly from 1 to that factor: the
    same model, slightly worse, probed on the same images.
    """
    torch.manual_seed(0)
    wide, narrow = nn.Linear(3 * 8 * 8, 64), nn.Linear(64, 4)
    with torch.no_grad():
        narrow.weight.copy_(torch.randn(4, 1) @ torch.randn(1, 64))
        narrow.bias.zero_()
        wide.weight.mul_(torch.linspace(1, scale_rows, 64)[:, None])
    return nn.Sequential(OrderedDict(flat=nn.Flatten(), wide=wide, narrow=narrow)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.save(_wide_and_narrow(), root / "net.pt")
    torch.save(_wide_and_narrow(0.8), root / "worse.pt")
    return root / "net.pt", root / "worse.pt"


def _digit_embeddings(model: nn.Sequential, layer: str, batch_size: int, max_samples: int | None = None) -> list:
    """The layer's outputs on the CLI's batches of builtin:digits, as float64 numpy, batch by batch."""
    loader = open_images("builtin:digits", image_size=8, batch_size=batch_size, max_samples=max_samples)
    with torch.no_grad():
        return [model[: list(model._modules).index(layer) + 1](x).double().numpy() for x in loader]


def _effective_rank(z: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False)), 0, None)[::-1][: min(len(z), z.shape[1])]
    p = np.sqrt(eig) / np.sqrt(eig).sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _reports(tmp_path) -> list:
    return ["--report-json", tmp_path / "r.json", "--junit-xml", tmp_path / "r.xml", "--summary-md", tmp_path / "s.md"]


# ----------------------------------------------------------------------------- 1. a FAIL beats "cannot judge"


def test_a_judged_fail_is_reported_when_another_layer_cannot_be_judged(tmp_path, models, invoke):
    """Was: exit 2, nothing on stdout, "checks": [] and no JUnit failure: the FAIL of `narrow` was lost."""
    net, _ = models
    code, stdout, stderr = invoke(["check", net, *DIGITS, "--max-samples", "20", "--layer", "wide", "--layer", "narrow",
                                   "--min-effective-rank", "19.5", *_reports(tmp_path)])
    assert code == 1 and stderr == ""
    narrow = np.concatenate(_digit_embeddings(_wide_and_narrow(), "narrow", 64, max_samples=20))
    wide = np.concatenate(_digit_embeddings(_wide_and_narrow(), "wide", 64, max_samples=20))
    fail, cannot, count = stdout.splitlines()
    assert fail == "FAIL min-effective-rank [narrow]: effective_rank = 1 (required >= 19.5)"
    assert cannot == (f"CANNOT JUDGE min-effective-rank [wide]: effective_rank = {_effective_rank(wide):.4g} from 20 "
                      "images, which show at most 19 of its 64 dimensions; need at least 65 images, got 20")
    assert count == "0/1 checks passed, 1 cannot be judged; collapse detected"
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["verdict"], report["n_checks"], report["n_failed"], report["n_cannot_judge"]) == ("fail", 2, 1, 1)
    judged, refused = report["checks"]
    # float32 embeddings: the rank-1 layer's 3 round-off eigenvalues move its effective rank by ~2e-6
    assert judged["verdict"] == "fail" and judged["value"] == pytest.approx(_effective_rank(narrow), abs=1e-4)
    assert (refused["verdict"], refused["layer"], refused["needed_samples"], refused["n_samples"]) == (
        "cannot judge", "wide", 65, 20)
    assert refused["value"] == pytest.approx(_effective_rank(wide), rel=1e-4)
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "1")
    (error_case,) = [case for case in suite.findall("testcase") if case.find("error") is not None]
    assert error_case.get("classname") == "collapse-probe.wide" and error_case.find("error").get("type") == "CannotJudge"
    assert {p.get("name"): p.get("value") for p in error_case.iter("property")} == {"needed_samples": "65",
                                                                                    "n_samples": "20"}
    summary = (tmp_path / "s.md").read_text()
    assert summary.startswith("### collapse-probe check: FAIL (0/1 checks passed, 1 cannot be judged)")
    assert "| min-effective-rank | narrow | 1 | >= 19.5 | ❌ fail | 20 |" in summary
    assert "| ⚠️ cannot judge | 20 (need 65) |" in summary


def test_nothing_failed_but_a_bound_cannot_be_judged_exits_2_with_every_result(tmp_path, invoke):
    rng = np.random.default_rng(0)
    spectra = {"small": Spectrum.from_embeddings(torch.as_tensor(rng.standard_normal((20, 4))), layer="small"),
               "big": Spectrum.from_embeddings(torch.as_tensor(rng.standard_normal((20, 64))), layer="big")}
    path = write_outputs(ProbeResult(spectra), tmp_path / "run")["json"]
    # big: 0 of the 19 dims 20 samples show are collapsed, 45 unobserved: between 0 and 45/64 of its dims
    code, stdout, stderr = invoke(["check", path, "--min-effective-rank", "3", "--max-collapsed-fraction", "0.3",
                                   *_reports(tmp_path)])
    assert code == 2 and stderr.startswith("Error: cannot judge max-collapsed-fraction [big]: between 0 and 0.7031 ")
    assert [line.split(" [")[0] for line in stdout.splitlines()[:-1]] == [
        "PASS min-effective-rank", "PASS max-collapsed-fraction", "PASS min-effective-rank",
        "CANNOT JUDGE max-collapsed-fraction"]
    assert stdout.splitlines()[-1] == "3/3 checks passed, 1 cannot be judged"
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["verdict"], report["n_checks"], report["n_failed"], report["n_cannot_judge"]) == ("cannot judge", 4, 0, 1)
    assert (tmp_path / "s.md").read_text().startswith("### collapse-probe check: CANNOT JUDGE (3/3 checks passed, 1 ")
    # small: RankMe <= 4 < 21 with every dimension shown: a FAIL
    code, stdout, _ = invoke(["check", path, "--min-rankme", "21"])
    assert code == 1 and "FAIL min-rankme [small]" in stdout and "CANNOT JUDGE min-rankme [big]" in stdout


# ----------------------------------------------------------------------------- 2. comparable baselines


def test_a_baseline_of_other_conventions_or_dimension_is_refused(tmp_path, models, invoke):
    """Was: exit 0, "2/2 checks passed" for each of these."""
    net, _ = models
    code, _, _ = invoke(["spectrum", net, *DIGITS, "--layer", "wide", "--normalize", "--out", tmp_path / "normalized"])
    assert code == 0
    code, stdout, stderr = invoke(["check", net, *DIGITS, "--layer", "wide", "--baseline",
                                   tmp_path / "normalized" / "spectrum.json", "--max-drop", "0.1", *_reports(tmp_path)])
    line = ("baseline 'wide' was made with normalize=True, this run with normalize=False: a drop is only meaningful "
            "between spectra of the same conventions and dimension; probe both the same way "
            "(--center/--no-center, --normalize/--no-normalize, the same --layer)")
    assert (code, stdout, stderr.strip()) == (2, "", f"Error: {line}")
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["verdict"], report["reason"]) == ("error", line)
    code, _, _ = invoke(["spectrum", net, *DIGITS, "--layer", "wide", "--no-center", "--out", tmp_path / "uncentred"])
    assert code == 0
    code, _, stderr = invoke(["check", net, *DIGITS, "--layer", "wide", "--baseline",
                              tmp_path / "uncentred" / "spectrum.json", "--max-drop", "0.1"])
    assert code == 2 and stderr.startswith("Error: baseline 'wide' was made with center=False, ddof=0, this run with "
                                           "center=True, ddof=1: ")
    z = torch.as_tensor(np.random.default_rng(0).standard_normal((3000, 32)))
    files = {name: write_outputs(ProbeResult({"embedding": s}), tmp_path / name)["json"] for name, s in {
        "centred": Spectrum.from_embeddings(z, layer="embedding"),
        "uncentred": Spectrum.from_embeddings(z, center=False, layer="embedding"),
        "half": Spectrum.from_embeddings(z[:, :16], layer="embedding")}.items()}
    code, _, stderr = invoke(["check", files["centred"], "--baseline", files["uncentred"], "--max-drop", "0.1"])
    assert code == 2 and stderr.startswith("Error: baseline 'embedding' was made with center=False, ddof=0, this run "
                                           "with center=True, ddof=1: ")
    code, _, stderr = invoke(["check", files["half"], "--baseline", files["centred"], "--max-drop", "0.6"])
    assert code == 2 and stderr.startswith("Error: baseline 'embedding' was made with dim=32, this run with dim=16: ")


def test_a_baseline_of_ten_times_the_samples_is_a_warning_everywhere(tmp_path, invoke):
    z = torch.as_tensor(np.random.default_rng(0).standard_normal((3000, 32)))
    base = write_outputs(ProbeResult({"fc": Spectrum.from_embeddings(z, layer="fc")}), tmp_path / "base")["json"]
    few = write_outputs(ProbeResult({"fc": Spectrum.from_embeddings(z[:300], layer="fc")}), tmp_path / "few")["json"]
    code, stdout, _ = invoke(["check", few, "--baseline", base, "--max-drop", "0.1", "--quiet", *_reports(tmp_path)])
    warning = ("max-drop [fc]: the baseline has 3000 samples, this run 300 (10x fewer): effective rank and RankMe change "
               "with the sample count, so part of any difference is the count's; probe both on the same images "
               "(--max-samples)")
    assert code == 0 and stdout.splitlines() == [f"WARNING {warning}", "2/2 checks passed"]
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == [warning]
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.find("properties/property").attrib == {"name": "warning", "value": warning}
    assert suite.findall("system-out")[-1].text == f"WARNING {warning}"
    assert f"**Warning:** {warning}" in (tmp_path / "s.md").read_text()


# ----------------------------------------------------------------------------- 3. paired error bars


def test_max_drop_sigma_pairs_two_probes_of_the_same_images(tmp_path, models, invoke):
    """Was: drop 0.053 = 0.17 combined SE, PASS at 3 sigma; numpy's paired jackknife says 4.25 SE."""
    net, worse = models
    probe = [*DIGITS, "--layer", "wide", "--groups", "10", "--batch-size", "20"]
    for name, model in (("base", net), ("new", worse)):
        assert invoke(["spectrum", model, *probe, "--out", tmp_path / name])[0] == 0
    code, stdout, _ = invoke(["check", tmp_path / "new" / "spectrum.json", "--baseline", tmp_path / "base" / "spectrum.json",
                              "--max-drop-sigma", "3", "--report-json", tmp_path / "r.json"])
    # independent reference: numpy on the same batches, batch i -> group i mod 10
    batches = {name: _digit_embeddings(_wide_and_narrow(scale), "wide", 20) for name, scale in (("a", 0.8), ("b", 1.0))}
    group = np.concatenate([np.full(len(b), i % 10) for i, b in enumerate(batches["a"])])
    z = {name: np.concatenate(b) for name, b in batches.items()}
    loo = {name: np.array([_effective_rank(x[group != k]) for k in range(10)]) for name, x in z.items()}
    d = loo["b"] - loo["a"]
    paired = math.sqrt(9 / 10 * ((d - d.mean()) ** 2).sum())
    combined = math.hypot(*(math.sqrt(9 / 10 * ((v - v.mean()) ** 2).sum()) for v in loo.values()))
    drop = _effective_rank(z["b"]) - _effective_rank(z["a"])
    assert drop / paired > 4 and drop / combined < 0.2  # measured: drop 0.053 = 4.25 paired SE, 0.17 combined
    result = json.loads((tmp_path / "r.json").read_text())["checks"][0]
    assert code == 1 and (result["metric"], result["passed"], result["error_bars"]) == ("effective_rank", False, "paired")
    # rel 1e-3: float32 embeddings; the SE is a difference of effective ranks 400x larger than itself
    assert result["se"] == pytest.approx(paired, rel=1e-3)
    assert f"drop {drop:.3g} = {drop / paired:.2f} paired SE" in stdout
    # other batches (so other rows in each group): the combined error, and the output says so
    assert invoke(["spectrum", net, *probe[:-1], "10", "--out", tmp_path / "other"])[0] == 0
    code, stdout, _ = invoke(["check", tmp_path / "new" / "spectrum.json", "--baseline",
                              tmp_path / "other" / "spectrum.json", "--max-drop-sigma", "3", "--junit-xml", tmp_path / "r.xml"])
    assert code == 0 and "combined SE" in stdout and "unpaired: different groups (group_sizes: baseline [40, 40" in stdout
    assert "WARNING max-drop-sigma [wide]: unpaired error bars, different groups" in stdout
    case = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase")
    assert {p.get("name"): p.get("value") for p in case.iter("property")}["error_bars"] == "unpaired"


# ----------------------------------------------------------------------------- 4. atomic reports


def test_every_check_report_is_written_to_a_temporary_file_then_renamed(tmp_path, invoke, monkeypatch):
    import collapse_probe._utils.files as files

    renamed = []
    real = os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: renamed.append((src, dst)) or real(src, dst))
    z = torch.as_tensor(np.random.default_rng(0).standard_normal((500, 8)))
    path = write_outputs(ProbeResult({"fc": Spectrum.from_embeddings(z, layer="fc")}), tmp_path / "run")["json"]
    renamed.clear()  # the spectrum files above are written atomically too; only the reports count here
    reports = tmp_path / "reports"
    code, _, _ = invoke(["check", path, "--min-effective-rank", "7", *_reports(reports)])
    assert code == 0
    targets = {reports / "r.json", reports / "r.xml", reports / "s.md"}
    assert {os.fspath(dst) for _, dst in renamed} == {os.fspath(p) for p in targets}
    assert all(os.path.dirname(src) == os.path.dirname(dst) for src, dst in renamed)  # same folder: an atomic rename
    assert {p.name for p in reports.iterdir()} == {"r.json", "r.xml", "s.md"}
