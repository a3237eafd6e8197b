"""One unreadable checkpoint is reported and skipped, with exit 1 at the end; the rest of the
trajectory is complete. Only when no checkpoint at all can be probed is it an input error (2)."""

from __future__ import annotations

import json

from .conftest import FAST, write_checkpoint

ARGS = ["--data", "builtin:digits", "--max-samples", "64", *FAST]


def test_a_truncated_checkpoint_is_reported_and_skipped(invoke, run_dir, tmp_path):
    whole = (run_dir / "epoch_0002.pt").read_bytes()
    (run_dir / "epoch_0002.pt").write_bytes(whole[: len(whole) // 2])
    code, out, err = invoke(["track", run_dir, *ARGS, "--out", tmp_path / "t", "--json"])
    assert code == 1
    assert "epoch_0002.pt: FAILED, skipped:" in err and "not a PyTorch checkpoint" in err
    document = json.loads(out)
    failed = [c for c in document["checkpoints"] if c["status"] == "failed"]
    assert [c["name"] for c in failed] == ["epoch_0002.pt"] and failed[0]["error"]
    assert sorted({r["step"] for r in document["rows"]}) == [10, 30]
    report = (tmp_path / "t" / "report.html").read_text()
    assert "could not be probed" in report and "epoch_0002.pt" in report
    # repaired, it is probed on the next run; the others are taken as they were
    (run_dir / "epoch_0002.pt").write_bytes(whole)
    code, out, err = invoke(["track", run_dir, *ARGS, "--out", tmp_path / "t", "--json"])
    assert code == 0, err
    assert [c["status"] for c in json.loads(out)["checkpoints"]] == ["stored", "probed", "stored"]


def test_a_file_that_is_no_checkpoint_and_a_model_that_does_not_fit_are_skipped(invoke, run_dir, tmp_path):
    (run_dir / "epoch_0004.pt").write_bytes(b"garbage")
    write_checkpoint(run_dir / "epoch_0005.pt", seed=5, epoch=5, step=50, width=8)  # loads: another model, fine
    code, out, err = invoke(["track", run_dir, *ARGS, "--out", tmp_path / "t", "--json"])
    assert code == 1
    statuses = {c["name"]: c["status"] for c in json.loads(out)["checkpoints"]}
    assert statuses == {"epoch_0001.pt": "probed", "epoch_0002.pt": "probed", "epoch_0003.pt": "probed",
                        "epoch_0004.pt": "failed", "epoch_0005.pt": "probed"}


def test_when_nothing_can_be_probed_it_is_an_input_error(invoke, tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "b.pt").write_bytes(b"y")
    code, _, err = invoke(["track", tmp_path, *ARGS, "--out", tmp_path / "t"])
    assert code == 2 and "no checkpoint could be probed" in err


def test_the_same_file_twice_is_probed_once(invoke, run_dir, tmp_path):
    (run_dir / "epoch_0009.pt").write_bytes((run_dir / "epoch_0003.pt").read_bytes())  # step 30 recorded too
    code, out, err = invoke(["track", run_dir, *ARGS, "--out", tmp_path / "t", "--json"])
    assert code == 0, err
    document = json.loads(out)
    assert [c["status"] for c in document["checkpoints"]] == ["probed", "probed", "probed", "duplicate"]
    assert "same content as" in err
