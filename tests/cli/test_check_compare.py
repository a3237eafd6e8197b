"""`collapse-probe check` exit codes and reports, `compare` and `embeddings`."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from collapse_probe.pipeline.outputs import ProbeResult, load_spectra, write_outputs
from collapse_probe.results.spectrum import Spectrum


def _saved(tmp_path, name, z):
    """A spectrum.json of embeddings ``z`` under tmp_path/name; returns (path, Spectrum)."""
    s = Spectrum.from_embeddings(z, layer="fc")
    paths = write_outputs(ProbeResult({"fc": s}, {"fc": "representation"}), tmp_path / name)
    return paths["json"], s


@pytest.fixture()
def healthy_and_collapsed(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 16, generator=g, dtype=torch.float64)
    collapsed = z * torch.tensor([1.0] * 4 + [0.0] * 12, dtype=torch.float64)
    return _saved(tmp_path, "healthy", z), _saved(tmp_path, "collapsed", collapsed)


def test_check_exit_codes_on_saved_spectra(healthy_and_collapsed, invoke):
    (healthy, h), (collapsed, c) = healthy_and_collapsed
    code, stdout, _ = invoke(["check", healthy, "--min-effective-rank", "15", "--max-collapsed-fraction", "0"])
    assert code == 0 and "2/2 checks passed" in stdout
    code, stdout, _ = invoke(["check", collapsed, "--min-effective-rank", "15", "--max-collapsed-fraction", "0.5"])
    assert code == 1
    assert f"FAIL min-effective-rank [fc]: effective_rank = {c.effective_rank:.4g} (required >= 15)" in stdout
    assert "FAIL max-collapsed-fraction [fc]: collapsed_fraction = 0.75 (required <= 0.5)" in stdout
    code, stdout, _ = invoke(["check", collapsed, "--min-rankme", "3"])
    assert code == (0 if c.rankme >= 3 else 1) and c.rankme >= 3


@pytest.mark.parametrize(
    "args",
    [
        [],  # no bound at all
        ["--max-drop", "0.1"],  # max-drop without baseline
        ["--max-collapsed-fraction", "2"],
        ["--baseline", "missing.json", "--max-drop", "0.1"],
    ],
)
def test_check_usage_errors_exit_2(healthy_and_collapsed, invoke, args):
    (healthy, _), _ = healthy_and_collapsed
    code, _, stderr = invoke(["check", healthy, *args])
    assert code == 2 and stderr.startswith("Error:")


def test_check_against_baseline(healthy_and_collapsed, invoke):
    (healthy, h), (collapsed, c) = healthy_and_collapsed
    code, _, _ = invoke(["check", healthy, "--baseline", healthy, "--max-drop", "0"])
    assert code == 0
    drop = 1 - c.effective_rank / h.effective_rank
    code, stdout, _ = invoke(["check", collapsed, "--baseline", healthy, "--max-drop", f"{drop + 0.01:.4f}"])
    assert "PASS max-drop [fc]: effective_rank" in stdout
    code, stdout, _ = invoke(["check", collapsed, "--baseline", healthy, "--max-drop", f"{drop - 0.01:.4f}"])
    assert code == 1 and "FAIL max-drop [fc]: effective_rank" in stdout


def test_check_writes_json_and_junit(tmp_path, healthy_and_collapsed, invoke):
    _, (collapsed, c) = healthy_and_collapsed
    code, _, _ = invoke(["check", collapsed, "--min-effective-rank", "2", "--max-collapsed-fraction", "0.5",
                         "--report-json", tmp_path / "r.json", "--junit-xml", tmp_path / "r.xml"])
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["n_checks"] == 2 and report["n_failed"] == 1
    assert report["metrics"]["fc"]["effective_rank"] == pytest.approx(c.effective_rank, rel=1e-12)
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/failure")) == 1


def test_check_on_checkpoint_and_data(tmp_path, checkpoints, image_folder, invoke, image_args):
    args = ["check", checkpoints["pt"], "--arch", "resnet18", "--data", image_folder, *image_args]
    code, stdout, _ = invoke([*args, "--max-collapsed-fraction", "1"])
    assert code == 0
    # 9 images show at most 8 of resnet18's 512 dims: no effective-rank verdict either way
    code, stdout, stderr = invoke([*args, "--min-effective-rank", "1e6"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "cannot judge min-effective-rank [fc]" in stderr and "need at least 513 images, got 9" in stderr
    assert stdout.splitlines()[0].startswith("CANNOT JUDGE min-effective-rank [fc]: effective_rank = ")
    assert stdout.splitlines()[1:] == ["1 cannot be judged"]
    code, _, stderr = invoke(["check", checkpoints["pt"], "--arch", "resnet18", "--min-rankme", "1"])
    assert code == 2 and "--data" in stderr


def test_compare_probes_checkpoints_in_one_pass(tmp_path, checkpoints, image_folder, invoke, image_args,
                                                monkeypatch, healthy_and_collapsed):
    import collapse_probe.pipeline.checkpoints as pipeline

    calls = []
    real = pipeline.spectrum
    monkeypatch.setattr(pipeline, "spectrum", lambda *a, **k: calls.append(a[2].module_names()) or real(*a, **k))
    (healthy, h), _ = healthy_and_collapsed
    code, stdout, stderr = invoke(["compare", checkpoints["pt"], checkpoints["safetensors"], healthy,
                                   "--arch", "resnet18", "--data", image_folder, "--out", tmp_path / "cmp",
                                   *image_args[:-1]])
    assert code == 0, stderr
    assert calls == [["models.m0.fc", "models.m1.fc"]]  # both models, one pass, one batched solve
    rows = [line.split()[0] for line in stdout.strip().splitlines()[1:]]
    assert rows == ["plain.pt:fc", "plain.safetensors:fc", "spectrum.json:fc"]
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"compare.png", "compare.csv", "compare.json"}
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = (document["layers"][k]["eigenvalues"] for k in ("plain.pt:fc", "plain.safetensors:fc"))
    assert a == b  # same weights, same images


def test_compare_saved_spectra_needs_no_data(tmp_path, healthy_and_collapsed, invoke):
    (healthy, h), (collapsed, c) = healthy_and_collapsed
    code, stdout, _ = invoke(["compare", healthy, collapsed, "--json", "--out", tmp_path / "c"])
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics[f"{healthy}:fc"]["effective_rank"] == pytest.approx(h.effective_rank, rel=1e-12)
    assert metrics[f"{collapsed}:fc"]["collapsed_dims"] == 12


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_embeddings_command_matches_from_embeddings(tmp_path, invoke, suffix):
    z = np.random.default_rng(0).normal(size=(500, 6)) @ np.diag([3.0, 2.0, 1.0, 0.5, 0.1, 0.0])
    path = tmp_path / f"z{suffix}"
    if suffix == ".npy":
        np.save(path, z)
    elif suffix == ".pt":
        torch.save({"embeddings": torch.from_numpy(z)}, path)
    else:
        save_file({"z": torch.from_numpy(z)}, str(path))
    code, stdout, _ = invoke(["embeddings", path, "--json", "--out", tmp_path / "out"])
    assert code == 0
    got = json.loads(stdout)["metrics"]["z"]
    # independent reference: numpy float64 covariance eigenvalues -> effective rank of sqrt(lambda)
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False)), 0, None)
    p = np.sqrt(eig[eig > 0]) / np.sqrt(eig[eig > 0]).sum()
    assert got["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert got["collapsed_dims"] == 1
    assert load_spectra(tmp_path / "out" / "spectrum.json").spectra["z"].dim == 6


def test_embeddings_errors(tmp_path, invoke):
    np.save(tmp_path / "one_d.npy", np.zeros(10))
    code, _, stderr = invoke(["embeddings", tmp_path / "one_d.npy"])
    assert code == 2 and "(N, d)" in stderr
    code, _, stderr = invoke(["embeddings", tmp_path / "none.npy"])
    assert code == 2
    torch.save({"embeddings": np.zeros((4, 3))}, tmp_path / "pickled.pt")  # numpy needs full unpickling
    code, _, stderr = invoke(["embeddings", tmp_path / "pickled.pt"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1


def test_check_refuses_what_300_samples_of_a_512_d_model_cannot_show(tmp_path, invoke):
    """Issue 8 row 6: this printed `FAIL ... collapsed_fraction = 0.416 ... collapse detected`, exit 1."""
    z = torch.as_tensor(np.random.default_rng(0).standard_normal((300, 512)))
    path, s = _saved(tmp_path, "few", z)
    assert np.linalg.matrix_rank(z.numpy() - z.numpy().mean(0)) == 299 == s.max_rank
    code, stdout, stderr = invoke(["check", path, "--max-collapsed-fraction", "0.25"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stdout == "CANNOT JUDGE " + stderr.strip().removeprefix("Error: cannot judge ") + "\n1 cannot be judged\n"
    assert stderr.startswith("Error: cannot judge max-collapsed-fraction [fc]") and "need at least 513 samples, got 300" in stderr
    code, stdout, _ = invoke(["check", path, "--max-collapsed-fraction", "0.5"])  # holds even if all 213 unseen collapsed
    assert code == 0 and "PASS max-collapsed-fraction [fc]: at most 0.416 of 512 dims collapsed" in stdout
    code, stdout, _ = invoke(["compare", path, "--out", tmp_path / "cmp"])
    header, row = stdout.strip().splitlines()
    assert header.split()[6:8] == ["collapsed", "unobserved"] and row.split()[6:8] == ["0/299", "213"]
    code, stdout, _ = invoke(["compare", path, "--json", "--out", tmp_path / "cmp"])
    metrics = next(iter(json.loads(stdout).values()))
    assert (metrics["unobserved_dims"], metrics["max_rank"], metrics["collapsed_dims"], metrics["sample_limited"]) == (213, 299, 0, True)


def test_reports_say_which_dims_the_samples_cannot_show(tmp_path, invoke):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).standard_normal((9, 16)))
    code, stdout, stderr = invoke(["embeddings", tmp_path / "few.npy", "--out", tmp_path / "out"])
    assert code == 0 and stdout.splitlines()[1].split()[5:7] == ["0/8", "8"]  # collapsed 0 of 8 shown, 8 unobserved
    assert ("few: 9 samples show at most 8 of its 16 dimensions; the other 8 are unobserved (not counted as "
            "collapsed): use at least 17 samples to see them all") in stderr


# ----------------------------------------------------------------------------- report files: checked first, never stale

REPORT_OPTIONS = ["--report-json", "--junit-xml", "--summary-md"]


def _error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith("Error: "), line
    return line


@pytest.mark.parametrize("option", REPORT_OPTIONS)
def test_a_report_path_that_cannot_be_written_fails_before_the_model_is_loaded(tmp_path, invoke, monkeypatch,
                                                                               image_folder, option):
    import collapse_probe.pipeline.checkpoints as pipeline

    monkeypatch.setattr(pipeline, "load_or_probe", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "a_file").write_text("not a folder")
    bad = tmp_path / "a_file" / "sub" / "report"
    code, stdout, stderr = invoke(["check", tmp_path / "missing.pt", "--data", image_folder, "--min-rankme", "1",
                                   option, bad])
    assert code == 2 and stdout == ""
    assert _error_line(stderr) == f"Error: {option} {bad.parent}: cannot create the folder (Not a directory)"
    # an existing file that cannot be replaced (root may write anywhere: os.access stands in for a read-only file)
    stale = tmp_path / "read_only"
    stale.write_text("old")
    real_access = os.access

    def access(path, mode, **kwargs):
        return real_access(path, mode, **kwargs) and not (str(path) == str(stale) and mode & os.W_OK)

    monkeypatch.setattr(os, "access", access)
    code, _, stderr = invoke(["check", tmp_path / "missing.pt", "--data", image_folder, "--min-rankme", "1",
                              option, stale])
    assert code == 2
    assert _error_line(stderr) == f"Error: {option} {stale}: cannot write that file (permission denied)"
    assert stale.read_text() == "old"


@pytest.mark.parametrize("option", REPORT_OPTIONS)
def test_a_missing_report_folder_is_created_as_for_out(tmp_path, healthy_and_collapsed, invoke, option):
    (healthy, _), _ = healthy_and_collapsed
    code, _, stderr = invoke(["check", tmp_path / "missing.pt", "--min-rankme", "1", option,
                              tmp_path / "new" / "deeper" / "report"])
    assert code == 2 and "--data" in _error_line(stderr)
    assert (tmp_path / "new" / "deeper").is_dir()  # made while the options are parsed, as --out is
    code, _, _ = invoke(["check", healthy, "--min-rankme", "1", option, tmp_path / "new2" / "report"])
    assert code == 0 and (tmp_path / "new2" / "report").is_file()


def _stale_reports(tmp_path) -> list:
    """Reports of an earlier, passing run, at the paths the next run is given."""
    paths = [tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "s.md"]
    paths[0].write_text(json.dumps({"verdict": "pass", "passed": True, "n_checks": 1, "n_failed": 0}))
    paths[1].write_text('<testsuites tests="1" failures="0"><testsuite tests="1" failures="0">'
                        '<testcase name="min-rankme:rankme"/></testsuite></testsuites>')
    paths[2].write_text("### collapse-probe check: PASS (1/1 checks passed)\n")
    return ["--report-json", paths[0], "--junit-xml", paths[1], "--summary-md", paths[2]]


def _junit_cases(path) -> tuple[ET.Element, list]:
    suite = ET.parse(path).getroot().find("testsuite")
    return suite, suite.findall("testcase")


def test_cannot_judge_writes_every_report_saying_so(tmp_path, invoke):
    few, _ = _saved(tmp_path, "few", torch.randn(6, 16, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64))
    code, stdout, stderr = invoke(["check", few, "--min-effective-rank", "10", *_stale_reports(tmp_path)])
    line = _error_line(stderr)
    assert code == 2 and stdout == f"CANNOT JUDGE {line.removeprefix('Error: cannot judge ')}\n1 cannot be judged\n"
    assert line.startswith("Error: cannot judge min-effective-rank [fc]") and "need at least 17 samples, got 6" in line
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "cannot judge" and report["passed"] is False
    assert report["reason"] == line.removeprefix("Error: ")
    assert (report["n_checks"], report["n_failed"], report["n_cannot_judge"], report["n_errors"]) == (1, 0, 1, 1)
    (entry,) = report["checks"]
    assert (entry["verdict"], entry["passed"], entry["needed_samples"], entry["n_samples"]) == ("cannot judge", False, 17, 6)
    assert report["metrics"]["fc"]["n_samples"] == 6 and report["source"]["spectrum_file"] == str(few)
    suite, (case,) = _junit_cases(tmp_path / "r.xml")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "1")
    (error,) = case.findall("error")
    assert case.get("name") == "min-effective-rank:effective_rank" and error.get("type") == "CannotJudge"
    assert error.get("message") == entry["message"] == stdout.splitlines()[0] and case.find("skipped") is None
    assert (tmp_path / "s.md").read_text().startswith("### collapse-probe check: CANNOT JUDGE")


def test_a_run_stopped_by_an_error_leaves_no_stale_report(tmp_path, healthy_and_collapsed, invoke):
    (healthy, _), _ = healthy_and_collapsed
    code, stdout, stderr = invoke(["check", healthy, "--baseline", tmp_path / "missing.json", "--max-drop", "0.1",
                                   *_stale_reports(tmp_path)])
    assert code == 2 and stdout == ""
    line = _error_line(stderr)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "error" and report["passed"] is False and report["n_errors"] == 1
    assert report["reason"] == line.removeprefix("Error: ") and "missing.json" in report["reason"]
    suite, (case,) = _junit_cases(tmp_path / "r.xml")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "1")
    assert case.get("name") == "error" and case.find("error").get("message") == report["reason"]
    assert (tmp_path / "s.md").read_text().startswith("### collapse-probe check: ERROR")


def test_pass_and_fail_reports_carry_the_verdict(tmp_path, healthy_and_collapsed, invoke):
    (healthy, _), (collapsed, _) = healthy_and_collapsed
    code, _, _ = invoke(["check", healthy, "--min-effective-rank", "2", *_stale_reports(tmp_path)])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and (report["verdict"], report["passed"], report["reason"], report["n_errors"]) == ("pass", True, None, 0)
    code, _, _ = invoke(["check", collapsed, "--min-effective-rank", "15", *_stale_reports(tmp_path)])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and (report["verdict"], report["passed"], report["n_failed"]) == ("fail", False, 1)
    suite, (case,) = _junit_cases(tmp_path / "r.xml")
    assert (suite.get("failures"), suite.get("errors")) == ("1", "0") and case.find("failure") is not None


def test_a_report_that_cannot_be_written_is_removed_and_the_verdict_still_printed(tmp_path, healthy_and_collapsed,
                                                                                invoke, monkeypatch):
    import errno

    import collapse_probe.checks.reports as check_reports

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(check_reports, "write_junit_xml", disk_full)
    _, (collapsed, _) = healthy_and_collapsed
    code, stdout, stderr = invoke(["check", collapsed, "--min-effective-rank", "15", *_stale_reports(tmp_path)])
    assert code == 2 and "FAIL min-effective-rank [fc]" in stdout  # the verdict is not lost
    assert _error_line(stderr) == f"Error: --junit-xml {tmp_path / 'r.xml'}: cannot write (No space left on device)"
    assert not (tmp_path / "r.xml").exists()  # never stale
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "fail"
