"""`collapse-probe theory ...`: files, stdout table, errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from collapse_probe_cli.errors import run_cli
from collapse_probe_cli.main import cli

TINY = ["--samples", "400", "--batch-size", "32"]


def _invoke(args: list[str]) -> tuple[int, str, str]:
    runner = CliRunner()
    with runner.isolation() as (stdout, stderr, _):
        code = run_cli(cli, args)
    return code, stdout.getvalue().decode(), stderr.getvalue().decode()


def test_strong_aug_writes_figure_and_json(tmp_path) -> None:
    code, out, err = _invoke(["theory", "strong-aug", "--out", str(tmp_path), "--steps", "30", "--noise", "0", "--noise", "2", *TINY])
    assert code == 0, err
    assert "effective_rank" in out.splitlines()[0] and len(out.splitlines()) == 3
    png = tmp_path / "theory_strong_aug.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    data = json.loads((tmp_path / "theory_strong_aug.json").read_text())
    assert [level["noise"] for level in data["levels"]] == [0.0, 2.0]
    assert data["config"]["steps"] == 30 and data["config"]["batch_size"] == 32
    assert len(data["levels"][1]["weight_singular_values"]) == 16
    assert "wrote" in err


def test_two_layer_writes_three_figures(tmp_path) -> None:
    code, out, err = _invoke(["theory", "two-layer", "--out", str(tmp_path), "--steps", "20", "--depth-steps", "5", "--depth", "1", "--depth", "3", *TINY])
    assert code == 0, err
    for name in ("theory_two_layer.png", "theory_alignment.png", "theory_depth.png"):
        assert (tmp_path / name).stat().st_size < 200_000
    data = json.loads((tmp_path / "theory_two_layer.json").read_text())
    assert data["two_layer"]["trace"]["steps"] == [0, 10, 20]
    assert [(r["depth"], r["relu"]) for r in data["depth"]["runs"]] == [(1, False), (3, False), (1, True), (3, True)]
    assert "depth 3 + ReLU" in out


def test_two_layer_without_depth_sweep(tmp_path) -> None:
    code, _, err = _invoke(["theory", "two-layer", "--out", str(tmp_path), "--steps", "10", "--depth-steps", "0", *TINY])
    assert code == 0, err
    assert not (tmp_path / "theory_depth.png").exists()
    assert json.loads((tmp_path / "theory_two_layer.json").read_text())["depth"] is None


@pytest.mark.parametrize("args", [["--noise-from", "16"], ["--dim", "4", "--noise-from", "4"], ["--device", "gpu0"]])
def test_bad_settings_exit_2_with_one_line(tmp_path, args) -> None:
    code, _, err = _invoke(["theory", "strong-aug", "--out", str(tmp_path), "--steps", "1", *args])
    assert code == 2
    assert err.strip().startswith("Error:") and len(err.strip().splitlines()) == 1


def test_help_shows_worked_examples() -> None:
    code, out, _ = _invoke(["theory", "two-layer", "--help"])
    assert code == 0 and "collapse-probe theory two-layer --out theory_out" in out
