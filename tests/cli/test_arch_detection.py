"""`spectrum` on a bare state_dict without --arch: the detected architecture is named in the load report;
a file that fits no model is one line, exit 2 (issue 10 item 3)."""

from __future__ import annotations

import json
import sys

import torch
import torchvision


def test_detected_arch_is_named_in_the_report(checkpoints, image_folder, invoke, image_args, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # timm's resnetblur18 would fit too (test_arch_forwards.py)
    args = ["spectrum", checkpoints["pt"], "--data", image_folder, "--out", tmp_path, *image_args[:-1]]
    code, stdout, stderr = invoke(args)
    assert code == 0, stderr
    assert "arch resnet18 (torchvision, detected from its keys and shapes)" in stderr
    assert "architecture detected from keys and shapes: torchvision/resnet18 (checked " in stderr
    source = json.loads((tmp_path / "spectrum.json").read_text())["source"]
    assert source["arch"] == "resnet18" and source["load"]["arch_detected"] is True


def test_no_matching_arch_is_one_line_exit_2(image_folder, invoke, image_args, tmp_path):
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("layer4.1.")}
    path = tmp_path / "cut.pt"
    torch.save(state, path)
    code, stdout, stderr = invoke(["spectrum", path, "--data", image_folder, "--out", tmp_path / "o", *image_args])
    assert code == 2 and stdout == ""
    (line,) = stderr.strip().splitlines()
    assert line.startswith("Error: ") and "fits no torchvision" in line
    assert "closest: torchvision/resnet18 (10 missing" in line and "--arch" in line
