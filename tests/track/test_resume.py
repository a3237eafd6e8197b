"""Nothing computed twice, nothing lost: a second identical run probes nothing, a new checkpoint
only itself, a changed one again; an interrupted or killed run keeps every finished checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from collapse_probe.pipeline import track as track_module
from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig
from collapse_probe.pipeline.track import track
from collapse_probe.probe.options import ProbeOptions

from .conftest import write_checkpoint

CONFIG = ProbeConfig(DataConfig("builtin:digits", workers=0, batch_size=32, max_samples=96), ProbeOptions(progress=False))


def _same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    columns = ["checkpoint", "step", "layer", "n_samples", "effective_rank", "rankme", "collapsed_dims", "stable_rank"]
    pd.testing.assert_frame_equal(a[columns].reset_index(drop=True), b[columns].reset_index(drop=True))


def test_a_second_run_probes_nothing_and_a_new_checkpoint_only_itself(run_dir, tmp_path):
    out = tmp_path / "out"
    first = track([run_dir], CONFIG, out=out)
    assert len(first.probed) == 3
    again = track([run_dir], CONFIG, out=out)
    assert again.probed == [] and [c.status for c in again.checkpoints] == ["stored"] * 3
    _same_numbers(first.table, again.table)
    write_checkpoint(run_dir / "epoch_0004.pt", seed=4, epoch=4, step=40)
    more = track([run_dir], CONFIG, out=out)
    assert more.probed == [run_dir / "epoch_0004.pt"] and list(more.table["step"].unique()) == [10, 20, 30, 40]


def test_a_changed_checkpoint_or_other_options_are_probed_again(run_dir, tmp_path):
    out = tmp_path / "out"
    track([run_dir], CONFIG, out=out)
    write_checkpoint(run_dir / "epoch_0002.pt", seed=99, epoch=2, step=20)  # same name, new weights
    assert track([run_dir], CONFIG, out=out).probed == [run_dir / "epoch_0002.pt"]
    other = ProbeConfig(CONFIG.data, ProbeOptions(progress=False, normalize=True))
    assert len(track([run_dir], other, out=out).probed) == 3
    assert track([run_dir], other, out=out).probed == []  # both option sets are kept side by side


def test_an_interrupted_run_keeps_what_it_finished_and_resumes(run_dir, tmp_path, monkeypatch):
    reference = track([run_dir], CONFIG, out=tmp_path / "reference")
    calls = []
    real = track_module.spectrum

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(track_module, "spectrum", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        track([run_dir], CONFIG, out=out)
    partial = pd.read_csv(out / "trajectory.csv")
    assert list(partial["step"].unique()) == [10]  # what was done is written before the interrupt goes on
    monkeypatch.setattr(track_module, "spectrum", real)
    resumed = track([run_dir], CONFIG, out=out)
    assert resumed.probed == [run_dir / "epoch_0002.pt", run_dir / "epoch_0003.pt"]
    _same_numbers(resumed.table, reference.table)


def test_a_killed_process_loses_no_finished_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for epoch in range(1, 7):
        write_checkpoint(folder / f"epoch_{epoch:04d}.pt", seed=epoch, epoch=epoch, step=epoch)
    command = [sys.executable, "-m", "collapse_probe_cli.main", "track", str(folder), "--data", "builtin:digits",
               "--max-samples", "96", "--batch-size", "32", "--workers", "0", "-q"]
    out = tmp_path / "out"
    process = subprocess.Popen([*command, "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = out / "track" / "results"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if results.is_dir() and len(list(results.glob("*.json"))) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    finished = len(list(results.glob("*.json")))
    assert finished >= 2
    resumed = subprocess.run([*command, "--out", str(out), "--json"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    import json

    document = json.loads(resumed.stdout)
    statuses = [c["status"] for c in document["checkpoints"]]
    assert statuses.count("stored") == finished and statuses.count("probed") == 6 - finished
    fresh = subprocess.run([*command, "--out", str(tmp_path / "fresh")], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert fresh.returncode == 0, fresh.stderr
    _same_numbers(pd.read_csv(out / "trajectory.csv"), pd.read_csv(tmp_path / "fresh" / "trajectory.csv"))
