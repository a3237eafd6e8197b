"""The gate over time: exit 1 when a metric of the latest checkpoint fell more than a fraction from
its best (--max-drop) or since the checkpoint before (--max-step-drop); the drop printed and in JSON."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from collapse_probe.results.trajectory import drop_gate

from .conftest import FAST, write_checkpoint

ARGS = ["--data", "builtin:digits", "--max-samples", "96", *FAST]


def _frame(values, layer="fc"):
    return pd.DataFrame({"step": list(range(1, len(values) + 1)), "layer": layer, "effective_rank": values})


def test_drops_from_the_best_and_between_the_last_two_by_hand():
    gate = drop_gate(_frame([10.0, 40.0, 30.0, 24.0]), ["effective_rank"], max_drop=0.3, max_step_drop=0.3)
    check = gate["checks"][0]
    assert check["best"] == 40.0 and check["best_step"] == 2 and check["latest_step"] == 4
    assert check["drop_from_best"] == pytest.approx(16 / 40) and check["step_drop"] == pytest.approx(6 / 30)
    assert gate["failed"] and check["reasons"] == ["fell 40.0% from its best > --max-drop 0.3"]
    rising = drop_gate(_frame([10.0, 12.0]), ["effective_rank"], max_drop=0.0, max_step_drop=0.0)
    assert not rising["failed"] and rising["checks"][0]["step_drop"] == pytest.approx(-0.2)
    single = drop_gate(_frame([5.0]), ["effective_rank"], max_step_drop=0.1)
    assert not single["failed"] and "step_drop" not in single["checks"][0]


def test_every_layer_is_judged_and_nan_is_no_drop():
    frame = pd.concat([_frame([10.0, 9.5]), _frame([10.0, 2.0], layer="proj"), _frame([math.nan, math.nan], "x")])
    gate = drop_gate(frame, ["effective_rank"], max_drop=0.1)
    assert [(c["layer"], c["failed"]) for c in gate["checks"]] == [("fc", False), ("proj", True)]


def test_a_collapsing_latest_checkpoint_fails_the_cli_with_the_drop_printed_and_in_json(invoke, run_dir, tmp_path):
    write_checkpoint(run_dir / "epoch_0004.pt", seed=4, epoch=4, step=40, collapse=True)  # projector rank 1
    code, out, err = invoke(["track", run_dir, *ARGS, "--max-drop", "0.5", "--gate-metric", "effective_rank",
                             "--gate-metric", "rankme", "--out", tmp_path / "t", "--json"])
    assert code == 1
    gate = json.loads(out)["gate"]
    failed = {(c["layer"], c["metric"]) for c in gate["checks"] if c["failed"]}
    assert failed == {("projector", "effective_rank"), ("projector", "rankme")}
    projector = next(c for c in gate["checks"] if (c["layer"], c["metric"]) == ("projector", "effective_rank"))
    assert projector["latest_step"] == 40 and projector["drop_from_best"] > 0.5
    assert f"{0.0 - projector['drop_from_best']:+.1%} from best" in err and "FAIL" in err
    assert json.loads((tmp_path / "t" / "trajectory.json").read_text())["gate"]["failed"] is True
    assert "gate: FAIL" in (tmp_path / "t" / "report.html").read_text()


def test_a_healthy_run_passes_the_gate(invoke, run_dir, tmp_path):
    code, _, err = invoke(["track", run_dir, *ARGS, "--max-drop", "0.9", "--max-step-drop", "0.9",
                           "--out", tmp_path / "t"])
    assert code == 0, err
    assert "gate: backbone effective_rank" in err and ": ok" in err
