"""Issue 9's table: what a new user meets in the first hour ends in one clean line and exit 2 (bad
input), 1 (a finding) or 0, never a traceback or exit 3."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import click
import numpy as np
import pytest
import torch
from collapse_probe_cli.errors import run_cli
from PIL import Image

from collapse_probe.models.loading import PartialLoadWarning

TINY_MODELS = '''
import torch
import torchvision
from torch import nn


def tiny_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=16)


class HalfNaN(nn.Module):
    """Rows whose first pixel is negative come out NaN."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        z = self.lin(x.mean((2, 3)))
        return torch.where(x[:, :1, 0, 0] > 0, z, torch.full_like(z, float("nan")))


def half_nan():
    return HalfNaN()
'''


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _one_error_line(stderr: str) -> str:
    (line,) = _lines(stderr)
    assert line.startswith("Error: "), line
    return line


@pytest.fixture
def module_folder(tmp_path, monkeypatch):
    """A folder holding tiny_models_<id>.py as the current folder, which is not on sys.path (as for
    an installed `collapse-probe`); the module's name is returned, and forgotten afterwards."""
    name = f"tiny_models_{os.getpid()}_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(TINY_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def tiny_models(module_folder):
    """Saved state_dicts of the tiny models: {"vit": path, "nan": path}, with their --arch values."""
    sys.path.insert(0, os.getcwd())  # only to build the files; the CLI runs without it (module_folder)
    try:
        module = __import__(module_folder)
        torch.manual_seed(0)
        torch.save(module.tiny_vit().state_dict(), "vit.pth")
        torch.save(module.half_nan().state_dict(), "nan.pth")
    finally:
        sys.path.remove(os.getcwd())
        sys.modules.pop(module_folder, None)
    return {"vit": ("vit.pth", f"{module_folder}:tiny_vit"), "nan": ("nan.pth", f"{module_folder}:half_nan")}


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
    """train/ and val/, two classes each, 4 readable JPEGs per class, one corrupt JPEG in train/c0."""
    root = tmp_path_factory.mktemp("eval_data")
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                Image.fromarray(small).resize((36, 36), Image.BICUBIC).save(folder / f"{i}.jpg", quality=95)
    (root / "train" / "c0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


EVAL_ARGS = ["--image-size", "32", "--workers", "0", "--batch-size", "4", "--k", "3"]


# ----------------------------------------------------------------------------- eval


def test_eval_skips_and_counts_a_corrupt_jpeg_and_strict_exits_2(checkpoints, eval_folder, invoke):
    code, stdout, stderr = invoke(["eval", "knn", checkpoints["pt"], "--arch", "resnet18", "--data", eval_folder,
                                   *EVAL_ARGS])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert (result["n_train"], result["n_val"], result["n_unreadable_skipped"]) == (8, 8, 1)
    assert "skipped 1 unreadable image(s) of 9 in train" in stderr
    code, stdout, stderr = invoke(["eval", "knn", checkpoints["pt"], "--arch", "resnet18", "--data", eval_folder,
                                   "--strict", "--quiet", *EVAL_ARGS])
    assert code == 2 and stdout == ""
    assert "unreadable image" in _one_error_line(stderr) and "corrupt.jpg" in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["knn", "linear"])
def test_eval_device_cuda_without_a_gpu_exits_2_in_one_line(checkpoints, eval_folder, invoke, command):
    code, stdout, stderr = invoke(["eval", command, checkpoints["pt"], "--arch", "resnet18", "--data", eval_folder,
                                   "--device", "cuda", *EVAL_ARGS[:-2]])
    assert code == 2 and stdout == ""
    assert "CUDA is not available" in _one_error_line(stderr)


def test_eval_checks_the_data_folders_before_loading_anything(tmp_path, eval_folder, invoke):
    shutil.copytree(eval_folder / "train", tmp_path / "data" / "train")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")  # were it read first, its error would be the one shown
    code, _, stderr = invoke(["eval", "linear", broken, "--data", tmp_path / "data", *EVAL_ARGS[:-2]])
    assert code == 2
    line = _one_error_line(stderr)
    assert "no val/ folder" in line and "train/ and val/" in line


def test_eval_reads_torchvision_and_solo_learn_checkpoints(checkpoints, eval_folder, invoke):
    top1 = {}
    for fmt in ("pt", "lightning"):  # a torchvision state_dict; solo-learn's {"state_dict": {"backbone.*"}}
        code, stdout, stderr = invoke(["eval", "knn", checkpoints[fmt], "--arch", "resnet18", "--data", eval_folder,
                                       "--quiet", *EVAL_ARGS])
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result["dim"] == 512 and result["n_train"] == 8
        top1[fmt] = result["top1"]
    assert top1["pt"] == top1["lightning"]  # the same backbone weights give the same features


# ----------------------------------------------------------------------------- spectrum, layers, --out


def test_a_model_of_fixed_input_size_names_the_image_size_it_needs(tiny_models, image_folder, invoke, image_args,
                                                                    tmp_path):
    path, arch = tiny_models["vit"]
    code, stdout, stderr = invoke(["spectrum", path, "--arch", arch, "--data", image_folder, "--out", tmp_path / "o",
                                   *image_args, "--image-size", "64"])
    assert code == 2 and stdout == ""
    assert "this model needs 32 px images (--image-size 32)" in _one_error_line(stderr)
    code, _, stderr = invoke(["layers", path, "--arch", arch, "--image-size", "64"])
    assert code == 2 and "this model needs 32 px images (--image-size 32)" in _one_error_line(stderr)
    code, _, stderr = invoke(["spectrum", path, "--arch", arch, "--data", image_folder, "--out", tmp_path / "o",
                              *image_args])
    assert code == 0, stderr


@pytest.mark.parametrize("command", [
    ["spectrum", "missing.pt", "--data", "no_such_folder"],
    ["compare", "missing.pt", "--data", "no_such_folder"],
    ["embeddings", "missing.npy"],
    ["theory", "strong-aug"],
    ["demo"],
])
def test_an_unwritable_out_fails_before_anything_is_loaded(command, invoke, tmp_path):
    code, stdout, stderr = invoke([*command, "--out", "/proc/nope"])
    assert code == 2 and stdout == ""
    assert "--out /proc/nope: cannot create the folder" in _one_error_line(stderr)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, stdout, stderr = invoke([*command, "--out", a_file])  # click's own check: usage, then the error
    assert code == 2 and stdout == "" and "is a file" in _lines(stderr)[-1]


def test_an_out_folder_is_created_when_missing(checkpoints, image_folder, invoke, image_args, tmp_path):
    out = tmp_path / "new" / "deeper"
    code, _, stderr = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", image_folder,
                              "--out", out, *image_args])
    assert code == 0, stderr
    assert (out / "spectrum.json").is_file()


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_refuses_a_state_dict_and_lists_what_it_holds(checkpoints, invoke, tmp_path):
    code, stdout, stderr = invoke(["embeddings", checkpoints["pth"], "--out", tmp_path])
    assert code == 2 and stdout == ""
    line = _one_error_line(stderr)
    assert "holds 122 tensors (conv1.weight (64, 3, 7, 7)," in line and "--key" in line
    assert "looks like a model's weights" in line and "collapse-probe spectrum" in line
    code, stdout, stderr = invoke(["embeddings", checkpoints["pth"], "--key", "fc.weight", "--json", "--quiet",
                                   "--out", tmp_path])
    assert code == 0, stderr
    assert json.loads(stdout)["source"]["shape"] == [1000, 512]


# ----------------------------------------------------------------------------- warnings


@pytest.fixture
def python_shows_warnings(monkeypatch):
    """Warnings printed to stderr as plain Python prints them (pytest otherwise records them)."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


def _warning_group() -> click.Group:
    @click.group()
    def group() -> None:
        pass

    @group.command()
    @click.option("--quiet", "-q", is_flag=True)
    def noisy(quiet: bool) -> None:
        for _ in range(2):
            warnings.warn("sample-limited: 9 images\nsecond line of detail", UserWarning, stacklevel=1)
        warnings.warn("`torch.jit.load` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        warnings.warn("x.pt: partial load allowed, 3 tensors missing", PartialLoadWarning, stacklevel=1)

    return group


@pytest.mark.parametrize("quiet", [False, True])
def test_warnings_are_one_clean_line_each_and_quiet_keeps_only_the_partial_load(quiet, capsys,
                                                                                python_shows_warnings):
    code = run_cli(_warning_group(), ["noisy", *(["-q"] if quiet else [])])
    assert code == 0
    lines = _lines(capsys.readouterr().err)
    partial = "Warning: x.pt: partial load allowed, 3 tensors missing"
    assert lines == ([partial] if quiet else ["Warning: sample-limited: 9 images", partial])


def test_a_corrupt_image_warns_in_one_line_and_quiet_silences_it(checkpoints, image_folder, invoke, tmp_path,
                                                                 python_shows_warnings):
    args = ["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", image_folder, "--out", tmp_path,
            "--image-size", "32", "--workers", "0", "--batch-size", "4"]
    code, _, stderr = invoke(args)
    assert code == 0, stderr
    (warning,) = [line for line in stderr.splitlines() if "corrupt.jpg" in line and "skipping" in line]
    assert warning.strip().startswith("Warning: skipping unreadable image") and "UserWarning" not in stderr
    assert ".py:" not in stderr and "warnings.warn" not in stderr and "for obj in iterable" not in stderr
    assert any(line.startswith("Warning: fc: 9 images show at most 8") for line in stderr.splitlines())
    code, _, stderr = invoke([*args, "--quiet"])
    assert code == 0 and stderr == ""


# ----------------------------------------------------------------------------- non-finite output


def test_a_nan_model_is_refused_skipped_with_the_flag_and_fails_check(tiny_models, image_folder, invoke, image_args,
                                                                       tmp_path):
    path, arch = tiny_models["nan"]
    probe = [path, "--arch", arch, "--data", image_folder, *image_args]
    code, _, stderr = invoke(["spectrum", *probe, "--out", tmp_path])
    assert code == 2 and "--skip-nonfinite" in _one_error_line(stderr)
    code, stdout, stderr = invoke(["spectrum", *probe[:-1], "--skip-nonfinite", "--json", "--out", tmp_path])
    assert code == 0, stderr
    (layer,) = json.loads(stdout)["layers"].values()
    dropped = layer["conventions"]["n_skipped_nonfinite"]
    assert dropped > 0 and layer["n_samples"] + dropped == 9
    assert f"Warning: output: dropped {dropped} embeddings holding NaN/Inf (--skip-nonfinite)" in stderr
    code, stdout, stderr = invoke(["check", *probe, "--min-rankme", "1"])
    assert code == 1, stderr  # a finding, not a usage error
    assert stdout.startswith("FAIL finite-output: non-finite embeddings")


def test_a_nan_model_writes_every_report_saying_so_over_a_stale_one(tiny_models, image_folder, invoke, image_args,
                                                                      tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    path, arch = tiny_models["nan"]
    reports = {"json": tmp_path / "r.json", "xml": tmp_path / "r.xml", "md": tmp_path / "s.md"}
    reports["json"].write_text('{"verdict": "pass", "passed": true}')  # an earlier, passing run's
    reports["xml"].write_text('<testsuites tests="1" failures="0"><testsuite tests="1" failures="0">'
                              '<testcase name="min-rankme:rankme"/></testsuite></testsuites>')
    reports["md"].write_text("### collapse-probe check: PASS (1/1 checks passed)\n")
    code, stdout, stderr = invoke(["check", path, "--arch", arch, "--data", image_folder, *image_args,
                                   "--min-rankme", "1", "--report-json", reports["json"],
                                   "--junit-xml", reports["xml"], "--summary-md", reports["md"]])
    assert code == 1 and stderr == ""
    first = stdout.splitlines()[0]
    assert first.startswith("FAIL finite-output: non-finite embeddings (NaN/Inf) in ")
    suite = ET.parse(reports["xml"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "1", "0")
    (case,) = suite.findall("testcase")
    (failure,) = case.findall("failure")
    assert case.get("name") == "finite-output" and failure.get("message") == first
    assert "non-finite" in failure.text
    report = json.loads(reports["json"].read_text())
    assert (report["verdict"], report["passed"], report["n_checks"], report["n_failed"]) == ("fail", False, 1, 1)
    assert report["reason"] == first.removeprefix("FAIL ") and report["reason"].startswith("finite-output: non-finite")
    (entry,) = report["checks"]
    assert entry["check"] == "finite-output" and entry["passed"] is False and entry["message"] == first
    assert report["source"] == {"checkpoint": path}
    summary = reports["md"].read_text()
    assert summary.startswith("### collapse-probe check: FAIL") and "**Failed:** finite-output: non-finite" in summary
    assert step.read_text() == summary + "\n"


# ----------------------------------------------------------------------------- --arch module:callable, compare


def test_arch_module_in_the_current_folder_imports(tiny_models, image_folder, invoke, image_args, tmp_path):
    path, arch = tiny_models["vit"]
    assert os.getcwd() not in sys.path and "" not in sys.path
    code, stdout, stderr = invoke(["spectrum", path, "--arch", arch, "--data", image_folder, "--json",
                                   "--out", tmp_path / "o", *image_args])
    assert code == 0, stderr
    assert json.loads(stdout)["source"]["arch"] == arch


def test_compare_takes_one_arch_per_checkpoint_and_prints_each_load_report(tiny_models, checkpoints, image_folder,
                                                                           invoke, image_args, tmp_path):
    vit, vit_arch = tiny_models["vit"]
    args = ["compare", checkpoints["pt"], vit, "--data", image_folder, "--out", tmp_path / "cmp",
            *image_args[:-1]]  # not quiet: the load reports go to stderr
    code, stdout, stderr = invoke([*args, "--arch", "resnet18", "--arch", vit_arch])
    assert code == 0, stderr
    rows = [line.split()[0] for line in stdout.strip().splitlines()[1:]]
    assert rows == ["plain.pt:fc", "vit.pth:heads.head"]
    assert f"{checkpoints['pt']}: state_dict, arch resnet18" in stderr
    assert f"vit.pth: state_dict, arch {vit_arch}" in stderr
    code, _, stderr = invoke([*args, "--arch", "resnet18", "--arch", vit_arch, "--arch", "resnet18"])
    assert code == 2 and "--arch given 3 times for 2 checkpoints" in _one_error_line(stderr)


def test_an_all_unreadable_folder_says_how_many_images_could_be_read(checkpoints, invoke, image_args, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"not an image")
    code, stdout, stderr = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", folder,
                                   "--out", tmp_path / "o", *image_args])
    assert code == 2 and stdout == ""
    line = _one_error_line(stderr)
    assert line.startswith("Error: 0 of 3 images could be read (first error: ") and "0.jpg" in line
