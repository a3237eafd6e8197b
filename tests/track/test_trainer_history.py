"""The trainer keeps its history: --save-every N keeps OUT/checkpoints/epoch_NNNN.pt (step and epoch
recorded) beside the latest; --resume continues from the latest of them; track reads them in order."""

from __future__ import annotations

import json
import os

import torch

from collapse_probe.ssl.checkpoint import latest_checkpoint
from collapse_probe.ssl.config import preset_config
from collapse_probe.ssl.loop import train

TINY = dict(width=4, projector_dim=8, image_size=16, batch_size=32, max_steps_per_epoch=2, monitor_every=0,
            online_probe=False, threads=1)


def test_save_every_keeps_epoch_files_with_their_step_and_epoch(tmp_path):
    train(preset_config("demo", epochs=5, save_every=2, out=str(tmp_path / "run"), **TINY))
    kept = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert kept == ["epoch_0002.pt", "epoch_0004.pt", "epoch_0005.pt"]  # every 2nd and the last
    for name, epoch in zip(kept, (2, 4, 5), strict=True):
        ckpt = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert (ckpt["epoch"], ckpt["step"]) == (epoch, 2 * epoch)
    latest = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (latest["epoch"], latest["step"]) == (5, 10)
    # the kept epoch 2 holds epoch 2's weights, not the latest (checkpoint.pt is replaced, never rewritten)
    early = torch.load(tmp_path / "run" / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert not torch.equal(early["model"]["projector.0.weight"], latest["model"]["projector.0.weight"])


def test_without_save_every_only_the_latest_is_kept(tmp_path):
    train(preset_config("demo", epochs=1, out=str(tmp_path / "run"), **TINY))
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.pt", "metrics.jsonl"]


def test_resume_continues_from_the_latest_kept_checkpoint(tmp_path, invoke):
    out = tmp_path / "run"
    train(preset_config("demo", epochs=3, save_every=1, out=str(out), **TINY))
    os.unlink(out / "checkpoint.pt")  # lost: the latest kept one is epoch 3
    assert latest_checkpoint(out) == str(out / "checkpoints" / "epoch_0003.pt")
    os.unlink(out / "checkpoints" / "epoch_0003.pt")
    assert latest_checkpoint(out) == str(out / "checkpoints" / "epoch_0002.pt")
    code, stdout, err = invoke(["train", "--out", out, "--resume", "--epochs", "4"])
    assert code == 0, err
    assert "resuming from" in err and "epoch_0002.pt after epoch 2" in err
    assert json.loads(stdout.strip().splitlines()[-1])["epoch"] == 4
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt",
                                                       "epoch_0004.pt"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_a_later_kept_checkpoint_beats_an_older_latest(tmp_path):
    out = tmp_path / "run"
    train(preset_config("demo", epochs=2, save_every=1, out=str(out), **TINY))
    (out / "checkpoint.pt").write_bytes((out / "checkpoints" / "epoch_0001.pt").read_bytes())  # killed between saves
    assert latest_checkpoint(out) == str(out / "checkpoints" / "epoch_0002.pt")


def test_a_fresh_run_removes_the_earlier_runs_history(tmp_path):
    out = tmp_path / "run"
    train(preset_config("demo", epochs=3, save_every=1, out=str(out), **TINY))
    train(preset_config("demo", epochs=1, save_every=1, out=str(out), **TINY))
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_0001.pt"]


def test_track_reads_the_trainers_own_run(tmp_path, invoke):
    out = tmp_path / "run"
    code, _, err = invoke(["train", "--preset", "demo", "--epochs", "3", "--save-every", "1", "--out", out,
                           *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if not isinstance(v, bool)],
                           "--no-online-probe"])
    assert code == 0, err
    code, stdout, err = invoke(["track", out / "checkpoints", "--data", "builtin:digits", "--max-samples", "64",
                                "--workers", "0", "--out", tmp_path / "t", "--json"])
    assert code == 0, err
    document = json.loads(stdout)
    assert [(c["name"], c["step"], c["step_origin"]) for c in document["checkpoints"]] == [
        ("epoch_0001.pt", 2, "step in the file"), ("epoch_0002.pt", 4, "step in the file"),
        ("epoch_0003.pt", 6, "step in the file")]


def test_the_run_folder_itself_gives_its_history_and_the_latest_once(tmp_path, invoke):
    out = tmp_path / "run"
    train(preset_config("demo", epochs=2, save_every=1, out=str(out), **TINY))
    code, stdout, err = invoke(["track", out, "--data", "builtin:digits", "--max-samples", "64", "--workers", "0",
                                "--out", tmp_path / "t", "--json"])
    assert code == 0, err
    listed = [(c["name"], c["status"]) for c in json.loads(stdout)["checkpoints"]]
    # checkpoint.pt is the same file as epoch_0002.pt (a hard link): probed once, as the epoch file
    assert listed == [("epoch_0001.pt", "probed"), ("epoch_0002.pt", "probed"), ("checkpoint.pt", "duplicate")]
