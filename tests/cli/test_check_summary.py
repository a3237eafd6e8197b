"""`check --summary-md` and $GITHUB_STEP_SUMMARY: the verdict as a Markdown table on the CI summary page."""

from __future__ import annotations

import torch
from collapse_probe_cli.errors import run_cli
from collapse_probe_cli.main import cli

from collapse_probe.pipeline.outputs import ProbeResult, write_outputs
from collapse_probe.results.spectrum import Spectrum


def _spectrum_file(tmp_path, n: int, d: int, name: str = "run") -> str:
    torch.manual_seed(0)
    spectrum = Spectrum.from_embeddings(torch.randn(n, d, dtype=torch.float64), layer="fc")
    paths = write_outputs(ProbeResult({"fc": spectrum}, {"fc": "representation"}), tmp_path / name)
    return str(paths["json"])


def _check(args, monkeypatch, step_summary=None) -> int:
    if step_summary is None:
        monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    else:
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    return run_cli(cli, ["check", *map(str, args), "--quiet"])


def test_pass_is_written_to_the_file_and_appended_to_the_step_summary(tmp_path, monkeypatch, capsys):
    spectrum = _spectrum_file(tmp_path, 500, 8)
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    code = _check([spectrum, "--min-effective-rank", 4, "--max-collapsed-fraction", 0.5,
                   "--summary-md", tmp_path / "summary.md"], monkeypatch, step)
    assert code == 0
    table = (tmp_path / "summary.md").read_text()
    assert table.startswith("### collapse-probe check: PASS (2/2 checks passed)")
    assert "| check | layer | value | required | result | samples |" in table
    assert "| min-effective-rank | fc |" in table and "| >= 4 | ✅ pass | 500 |" in table
    assert "| max-collapsed-fraction | fc |" in table and "<= 0.5" in table
    assert step.read_text() == "earlier step\n" + table + "\n"  # appended, not overwritten


def test_a_failure_is_marked_and_exits_1(tmp_path, monkeypatch):
    step = tmp_path / "step.md"
    code = _check([_spectrum_file(tmp_path, 500, 8), "--min-effective-rank", 7.99], monkeypatch, step)
    assert code == 1
    text = step.read_text()
    assert "### collapse-probe check: FAIL (0/1 checks passed)" in text and "❌ fail" in text


def test_cannot_judge_still_writes_the_summary_and_exits_2(tmp_path, monkeypatch):
    step = tmp_path / "step.md"
    code = _check([_spectrum_file(tmp_path, 6, 16), "--min-effective-rank", 10,
                   "--summary-md", tmp_path / "s.md"], monkeypatch, step)
    assert code == 2
    text = (tmp_path / "s.md").read_text()
    assert text.startswith("### collapse-probe check: CANNOT JUDGE")
    assert "need at least 17 samples, got 6" in text
    assert "| fc | 16 | 6 |" in text  # the per-layer line: dim and sample count
    assert step.read_text() == text + "\n"


def test_without_the_option_or_the_variable_nothing_is_written(tmp_path, monkeypatch):
    spectrum = _spectrum_file(tmp_path, 500, 8)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert _check([spectrum, "--min-effective-rank", 4], monkeypatch) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_ci_example_installs_from_the_repository_and_uses_the_summary():
    from pathlib import Path

    workflow = (Path(__file__).resolve().parents[2] / "examples" / "ci" / "collapse-check.yml").read_text()
    assert "git+https://" in workflow and "no package-index release" in workflow
    assert "--summary-md" in workflow and "GITHUB_STEP_SUMMARY" in workflow
    assert "pip install torch torchvision collapse-probe" not in workflow  # not on an index: would fail
