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
