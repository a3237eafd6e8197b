"""benchmarks/device_check.sh: its CPU dry run executes every step and writes the results JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import collapse_probe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"
STEPS = ["environment", "install", "images", "pytest_cuda", "accumulate", "core", "solve", "probe_overhead",
         "cli_images", "train_ceiling"]
TARGETS = ["statistics_fraction_of_float64_gemm", "probe_overhead_4_layers", "cli_speedup_vs_hand_written",
           "cli_fraction_of_bare_forward", "train_step_fraction_of_ceiling"]

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"),
    # the script's install step would otherwise reach for the package index
    pytest.mark.skipif(REPO not in Path(collapse_probe.__file__).resolve().parents,
                       reason="collapse_probe is not installed from this checkout"),
]


def _run(out: Path, *args: str, budget: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTEST_ADDOPTS", None)
    if budget is not None:
        env["DEVICE_CHECK_BUDGET_S"] = budget
    # a guard against a hang only: the dry run's own budgets (10 x the GPU run's) bound it first
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=5400)


def test_dry_run_runs_every_step_and_writes_the_results_json(tmp_path):
    run = _run(tmp_path / "out", "--dry-run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    result = json.loads((out / "results.json").read_text())
    assert result["format"] == "collapse-probe/device-check-v1"
    assert result["dry_run"] is True and result["ok"] is True and result["failed_steps"] == []
    assert result["seconds_total"] <= result["budget_s"] == 4500  # 450 s, scaled for the CPU dry run
    assert [step["name"] for step in result["steps"]] == STEPS
    for step in result["steps"]:
        assert step["status"] == "ok" and step["exit_code"] == 0, step
        assert isinstance(step["command"], str) and step["command"] and 0 <= step["seconds"] <= step["budget_s"]
        assert (out / step["output"]).exists()
    figures = {step["name"]: step["figures"] for step in result["steps"]}
    assert figures["environment"]["torch"] == torch.__version__
    tests = figures["pytest_cuda"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] == tests["tests"]  # the dry run hides the GPU: collected, then skipped
    assert figures["core"]["rows"][0]["d"] == 32 and figures["core"]["rows"][0]["streaming_over_floor"] > 0
    assert figures["solve"]["rows"][0]["d"] == 16
    assert figures["accumulate"]["dim"] == 64 and figures["accumulate"]["fraction_of_gemm_rate"] > 0
    assert [row["run"] for row in figures["probe_overhead"]["rows"]][0] == "bare loop"
    assert figures["cli_images"]["images"] == 8
    assert figures["train_ceiling"]["mode"] == "ceiling"
    assert [t["name"] for t in result["targets"]] == TARGETS
    for target in result["targets"]:  # every target is computed, even when its toy value means nothing
        assert isinstance(target["value"], float) and target["met"] in (True, False), target
    log = (out / "device_check.log").read_text()
    assert "step train_ceiling ok" in log and "(DRY RUN) OK" in log


def test_fails_fast_when_the_budget_runs_out(tmp_path):
    """A total budget too small for the steps: the first step without time fails, the rest are skipped."""
    run = _run(tmp_path / "out", "--dry-run", budget="6")
    assert run.returncode == 1
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["ok"] is False and len(result["failed_steps"]) == 1
    statuses = [step["status"] for step in result["steps"]]
    first_failure = statuses.index("timed out")
    assert all(s == "skipped" for s in statuses[first_failure + 1:]) and len(statuses) == len(STEPS)
    assert all(t["met"] is None for t in result["targets"][-1:])  # the trainer step never ran


def test_refuses_bad_arguments(tmp_path):
    assert _run(tmp_path, "--bogus").returncode == 2
