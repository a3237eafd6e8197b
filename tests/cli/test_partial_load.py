"""A checkpoint of the wrong architecture is refused in one line (exit 2), or probed with --allow-partial
while the warning, the load report and the JSON say what stays random (issue 8, rows 1-4)."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """A resnet34 state_dict: with --arch resnet18 it fills every tensor and leaves 96 backbone keys over."""
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("wrong_arch") / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return path


def test_wrong_arch_exits_2_with_one_line(resnet34_file, image_folder, invoke, image_args, tmp_path):
    code, stdout, stderr = invoke(["spectrum", resnet34_file, "--arch", "resnet18", "--data", image_folder,
                                   "--out", tmp_path, *image_args])
    assert code == 2
    assert stdout == ""
    (line,) = stderr.strip().splitlines()
    assert line.startswith("Error: ") and "96 unexpected keys that look like backbone weights" in line
    assert "layer1.2.conv1.weight" in line and "--allow-partial" in line
    assert not (tmp_path / "spectrum.json").exists()
    code, _, stderr = invoke(["check", resnet34_file, "--arch", "resnet18", "--data", image_folder,
                              "--min-effective-rank", "1", *image_args])
    assert code == 2 and len(stderr.strip().splitlines()) == 1


def test_allow_partial_probes_and_says_what_was_not_loaded(resnet34_file, image_folder, invoke, image_args,
                                                           tmp_path):
    args = ["spectrum", resnet34_file, "--arch", "resnet18", "--data", image_folder, "--allow-partial",
            "--out", tmp_path, *image_args[:-1]]  # without --quiet: the load report on stderr
    code, stdout, stderr = invoke(args)
    assert code == 0, stderr
    warning = [line for line in stderr.splitlines() if line.startswith("Warning: ")]
    assert any("partial load allowed" in line and "96 unexpected keys" in line for line in warning)
    assert "PARTIAL LOAD (--allow-partial)" in stderr
    assert "unexpected keys: layer1.2.conv1.weight" in stderr
    assert stdout.splitlines()[1].split()[:2] == ["fc", "representation"]
    load = json.loads((tmp_path / "spectrum.json").read_text())["source"]["load"]
    assert load["partial"] is True and (load["n_loaded"], load["n_expected"]) == (120, 120)
    assert len(load["unexpected_backbone_keys"]) == 96 and "fc.weight" in load["unexpected_keys"]


def test_allow_partial_warns_even_when_quiet(resnet34_file, image_folder, invoke, image_args):
    code, stdout, stderr = invoke(["check", resnet34_file, "--arch", "resnet18", "--data", image_folder,
                                   "--allow-partial", "--min-effective-rank", "1", *image_args])
    assert code == 0, stderr
    assert "checks passed" in stdout
    (line,) = [line for line in stderr.splitlines() if "partial load allowed" in line]
    assert line.startswith("Warning: ") and "96 unexpected keys" in line


def test_complete_load_reports_its_prefix_in_the_json(checkpoints, image_folder, invoke, image_args, tmp_path):
    code, stdout, stderr = invoke(["spectrum", checkpoints["lightning"], "--arch", "resnet18", "--data",
                                   image_folder, "--json", "--out", tmp_path, *image_args])
    assert code == 0, stderr
    load = json.loads(stdout)["source"]["load"]
    assert load["partial"] is False and load["stripped_prefix"] == "backbone." and load["missing_keys"] == []
