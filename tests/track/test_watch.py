"""``--watch``: each new checkpoint is probed once completely written; a half-written file is never
reported (nor its garbage probed), one that stays broken is; the files update as it goes."""

from __future__ import annotations

import json

import pandas as pd

from collapse_probe.pipeline._track_watch import watch
from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig
from collapse_probe.probe.options import ProbeOptions

from .conftest import FAST, write_checkpoint

CONFIG = ProbeConfig(DataConfig("builtin:digits", workers=0, batch_size=32, max_samples=64), ProbeOptions(progress=False))


def test_new_checkpoints_are_probed_once_complete_and_half_written_ones_never(tmp_path):
    folder, out = tmp_path / "checkpoints", tmp_path / "out"
    write_checkpoint(folder / "epoch_0001.pt", seed=1, epoch=1, step=10)
    write_checkpoint(tmp_path / "e2.pt", seed=2, epoch=2, step=20)
    write_checkpoint(tmp_path / "e3.pt", seed=3, epoch=3, step=30)
    whole2, whole3 = (tmp_path / "e2.pt").read_bytes(), (tmp_path / "e3.pt").read_bytes()
    seen = []

    def between_polls():  # what a trainer writes while the watcher sleeps, one step per poll
        yield lambda: (folder / "epoch_0002.pt").write_bytes(whole2[: len(whole2) // 3])  # being written
        yield lambda: (folder / "epoch_0002.pt").write_bytes(whole2)  # now complete
        yield lambda: (folder / "epoch_0003.pt").write_bytes(whole3[:100])  # written, then stuck
        while True:
            yield lambda: None

    steps = between_polls()
    clock = [0.0]

    def sleep(seconds):
        seen.append(sorted(pd.read_csv(out / "trajectory.csv")["step"].unique().tolist()))
        next(steps)()
        clock[0] += seconds

    lines = []
    trajectory = watch([folder], CONFIG, out, poll_s=1.0, timeout_s=6.0, sleep=sleep, clock=lambda: clock[0],
                       log=lines.append)
    assert seen[:4] == [[10], [10], [10, 20], [10, 20]]  # the files follow each probe
    assert [(c.path.name, c.status) for c in trajectory.checkpoints] == [
        ("epoch_0001.pt", "probed"), ("epoch_0002.pt", "probed"), ("epoch_0003.pt", "failed")]
    assert sum("epoch_0002.pt: FAILED" in line for line in lines) == 0  # never reported while it was changing
    assert sum("epoch_0003.pt: FAILED" in line for line in lines) == 1  # reported once it stopped changing
    document = json.loads((out / "trajectory.json").read_text())
    assert [c["status"] for c in document["checkpoints"]] == ["probed", "probed", "failed"]


def test_a_second_watch_takes_the_stored_results(tmp_path, run_dir):
    out = tmp_path / "out"
    first = watch([run_dir], CONFIG, out, poll_s=0.01, timeout_s=0)
    assert len(first.probed) == 3
    again = watch([run_dir], CONFIG, out, poll_s=0.01, timeout_s=0)
    assert again.probed == [] and [c.status for c in again.checkpoints] == ["stored"] * 3


def test_an_empty_folder_is_watched_until_the_time_limit(invoke, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = invoke(["track", tmp_path / "empty", "--data", "builtin:digits", *FAST, "--watch",
                             "--poll-interval", "0.01", "--watch-timeout", "0.05", "--out", tmp_path / "t"])
    assert code == 0, err
    assert "watching" in err and json.loads((tmp_path / "t" / "trajectory.json").read_text())["checkpoints"] == []


def test_the_cli_watch_probes_what_is_there_and_gates_it(invoke, run_dir, tmp_path):
    write_checkpoint(run_dir / "epoch_0004.pt", seed=4, epoch=4, step=40, collapse=True)
    code, out, err = invoke(["track", run_dir, "--data", "builtin:digits", "--max-samples", "64", *FAST, "--watch",
                             "--poll-interval", "0.01", "--watch-timeout", "0", "--max-drop", "0.5",
                             "--gate-metric", "rankme", "--out", tmp_path / "t"])
    assert code == 1 and "FAIL" in err
