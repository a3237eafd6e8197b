"""``collapse-probe train``: options reach the config, bad input exits 2 before training."""

from __future__ import annotations

import json

import torch
from collapse_probe_cli.main import main


def _run(argv, capsys):
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_resume_via_cli(tmp_path, capsys):
    args = ["train", "--preset", "demo", "--method", "directclr", "--d0", "5", "--width", "4", "--batch-size", "32",
            "--max-steps-per-epoch", "1", "--epochs", "1", "--no-online-probe", "--monitor-every", "0", "--threads", "1",
            "--out", str(tmp_path)]
    code, out, _ = _run(args, capsys)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epoch"] == 1 and "online_acc" not in summary
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["arch"]["d0"] == 5 and ckpt["config"]["batch_size"] == 32
    # --resume with only --out and a longer --epochs continues from the saved settings
    code, out, err = _run(["train", "--out", str(tmp_path), "--resume", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "resuming" in err and json.loads(out.strip().splitlines()[-1])["epoch"] == 2


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    code, _, err = _run(["train", "--preset", "demo", "--method", "directclr", "--d0", "999", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--d0 must be between 1 and the representation size 128" in err
    code, _, err = _run(["train", "--preset", "nope", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown preset" in err
    code, _, err = _run(["train", "--preset", "demo", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "checkpoint.pt").exists()


_QUICK = ["--preset", "demo", "--width", "4", "--batch-size", "32", "--max-steps-per-epoch", "1", "--epochs", "1",
          "--no-online-probe", "--monitor-every", "0", "--threads", "1"]


def test_a_non_empty_out_is_refused_untouched_unless_overwrite(tmp_path, capsys):
    assert _run(["train", *_QUICK, "--out", str(tmp_path)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl"} <= set(before)
    code, _, err = _run(["train", *_QUICK, "--method", "directclr", "--d0", "5", "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not empty (checkpoint.pt, metrics.jsonl)" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    code, _, err = _run(["train", *_QUICK, "--out", str(tmp_path), "--resume", "--overwrite"], capsys)
    assert code == 2 and "give one of them" in err
    code, _, err = _run(["train", *_QUICK, "--method", "directclr", "--d0", "5", "--out", str(tmp_path), "--overwrite"], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["arch"]["method"] == "directclr"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_default_out_depends_on_preset_and_method(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for method in ("simclr", "directclr"):
        code, out, err = _run(["train", *_QUICK, "--method", method, "--d0", "5"], capsys)
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1])["checkpoint"] == f"runs/demo-{method}/checkpoint.pt"
    code, out, err = _run(["train", *_QUICK, "--method", "directclr", "--d0", "5", "--epochs", "2", "--resume"], capsys)
    assert code == 0 and "resuming from runs/demo-directclr/checkpoint.pt" in err
    assert "runs/PRESET-METHOD" in _run(["train", "--help"], capsys)[1]


def test_a_fresh_run_removes_the_earlier_checkpoint_before_training(tmp_path):
    """--overwrite killed in epoch 1 must not leave the old checkpoint for --resume beside the new log."""
    from collapse_probe.ssl import preset_config, train

    (tmp_path / "checkpoint.pt").write_bytes(b"an earlier run")

    def crash(state):
        assert not (tmp_path / "checkpoint.pt").exists()
        raise KeyboardInterrupt

    config = preset_config("demo", width=4, batch_size=32, max_steps_per_epoch=1, epochs=1, online_probe=False,
                           monitor_every=0, threads=1, out=str(tmp_path))
    try:
        train(config, callbacks={"on_epoch_end": [crash]})
    except KeyboardInterrupt:
        pass
    assert not (tmp_path / "checkpoint.pt").exists()
