"""Which checkpoints ``track`` takes and in which order: the step each records, else the number in
its name, else the order given; folders, globs and lists; the order printed with its origin."""

from __future__ import annotations

import json

import pytest
import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.pipeline._track_sources import expand_sources, order_checkpoints, recorded_steps

from .conftest import FAST, write_checkpoint


def _names(checkpoints):
    return [c.path.name for c in checkpoints]


def test_the_recorded_step_beats_the_name(tmp_path):
    # names that sort the other way round: the step inside decides
    for name, step in (("a_9.pt", 300), ("b_1.pt", 100), ("c_5.pt", 200)):
        write_checkpoint(tmp_path / name, seed=step, epoch=step // 100, step=step)
    ordered = order_checkpoints(expand_sources([tmp_path]))
    assert _names(ordered) == ["b_1.pt", "c_5.pt", "a_9.pt"]
    assert [c.step for c in ordered] == [100, 200, 300]
    assert {c.origin for c in ordered} == {"step in the file"}


def test_lightning_global_step_is_preferred_to_its_epoch(tmp_path):
    for name, (epoch, step) in {"last.ckpt": (3, 30), "epoch=0-step=10.ckpt": (0, 10)}.items():
        torch.save({"epoch": epoch, "global_step": step, "state_dict": {"w": torch.zeros(1)}}, tmp_path / name)
    assert recorded_steps(tmp_path / "last.ckpt") == {"global_step": 30.0, "epoch": 3.0}
    ordered = order_checkpoints(expand_sources([tmp_path]))
    assert _names(ordered) == ["epoch=0-step=10.ckpt", "last.ckpt"]
    assert ordered[0].origin == "global_step in the file"


def test_one_key_for_all_else_the_number_in_the_name(tmp_path):
    torch.save({"global_step": 5, "w": torch.zeros(1)}, tmp_path / "model_20.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "model_3.pt")  # records nothing: the names decide for both
    ordered = order_checkpoints(expand_sources([tmp_path]))
    assert _names(ordered) == ["model_3.pt", "model_20.pt"] and ordered[0].origin == "the number in the name"


def test_without_steps_or_numbers_the_order_given_is_kept(tmp_path):
    for name in ("zeta.pt", "alpha.pt"):
        torch.save({"w": torch.zeros(1)}, tmp_path / name)
    ordered = order_checkpoints(expand_sources([tmp_path / "zeta.pt", tmp_path / "alpha.pt"]))
    assert _names(ordered) == ["zeta.pt", "alpha.pt"] and ordered[1].origin.startswith("position 1 given")


def test_hugging_face_trainer_folders_and_safetensors_metadata(tmp_path):
    from safetensors.torch import save_file

    for step in (500, 1500, 1000):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 500}))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model_750.safetensors"), metadata={"step": "750"})
    assert recorded_steps(tmp_path / "model_750.safetensors") == {"step": 750.0}
    assert recorded_steps(tmp_path / "checkpoint-500") == {"global_step": 500.0, "epoch": 1.0}
    ordered = order_checkpoints(expand_sources([tmp_path]))
    assert _names(ordered) == ["checkpoint-500", "model_750.safetensors", "checkpoint-1000", "checkpoint-1500"]
    assert ordered[0].origin == "the number in the name"  # step and global_step: no one key for all


def test_globs_lists_and_folders_each_checkpoint_once(tmp_path):
    for i in (1, 2, 3):
        write_checkpoint(tmp_path / "ck" / f"e{i}.pt", seed=i, epoch=i)
    (tmp_path / "ck" / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "ck" / ".e4.pt.tmp").write_bytes(b"half")  # a temporary file being written
    found = expand_sources([tmp_path / "ck" / "e2.pt", str(tmp_path / "ck" / "e*.pt"), tmp_path / "ck"])
    assert [p.name for p in found] == ["e2.pt", "e1.pt", "e3.pt"]
    with pytest.raises(CollapseProbeError, match="does not exist"):
        expand_sources([tmp_path / "missing.pt"])
    with pytest.raises(CollapseProbeError, match="matches no checkpoint"):
        expand_sources([str(tmp_path / "ck" / "*.ckpt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollapseProbeError, match="no checkpoints in that folder"):
        expand_sources([tmp_path / "empty"])


def test_the_cli_prints_the_order_and_where_each_step_came_from(invoke, run_dir, tmp_path):
    code, out, err = invoke(["track", run_dir, "--data", "builtin:digits", "--max-samples", "64", *FAST,
                             "--out", tmp_path / "t"])
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("  step")]
    assert [line.split()[1] for line in lines] == ["10", "20", "30"]
    assert all(line.endswith("(step in the file)") for line in lines)
    assert out.splitlines()[0].split()[:3] == ["step", "checkpoint", "layer"]
    assert len(out.splitlines()) == 1 + 3 * 2  # backbone and projector of each checkpoint


def test_bad_options_are_one_line_before_any_work(invoke, run_dir, tmp_path):
    code, _, err = invoke(["track", run_dir, *FAST, "--out", tmp_path / "t"])
    assert code == 2 and "--data" in err
    code, _, err = invoke(["track", tmp_path / "nope", "--data", "builtin:digits", "--out", tmp_path / "t"])
    assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1
