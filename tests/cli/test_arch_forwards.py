"""Candidates whose keys fit a state_dict equally are told apart by running them (issue 17 item 8).

timm's resnetblur18 has torchvision resnet18's keys and shapes (its blur filter is an unsaved
buffer) but another forward. Most of these tests need no timm: a stand-in ``timm`` module lists
``resnet18`` (torchvision's network: the same forward) and ``resnetblur18`` (torchvision's network
with a fixed [1, 2, 1] blur after a stride-1 max-pool, as timm's anti-aliased ResNets: another
forward); the shipped shape index holds both names.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models._detect import detect_arch
from collapse_probe.models._forwards import group_by_output, same_output
from collapse_probe.models.loading import load_encoder_with_report

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class _Blur(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] / 16 blur with stride 2; the filter is not saved (as timm's BlurPool2d)."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (taps[:, None] * taps[None, :] / 16).expand(channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _blur_resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    model.maxpool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _Blur(64))
    return model


def _stand_in_timm(names: list[str]) -> types.ModuleType:
    builders = {"resnet18": torchvision.models.resnet18, "resnetblur18": _blur_resnet18}
    timm = types.ModuleType("timm")
    timm.__version__ = "stand-in"
    timm.list_models = lambda: sorted(names)
    timm.is_model = lambda name: name in names
    timm.create_model = lambda name, pretrained=False: builders[name]()
    return timm


@pytest.fixture
def timm_with(monkeypatch):
    """``timm_with([...])``: a stand-in timm holding those models, importable as ``timm``."""
    def install(names: list[str]) -> None:
        monkeypatch.setitem(sys.modules, "timm", _stand_in_timm(names))
    return install


@pytest.fixture(scope="module")
def blur_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in _blur_resnet18().state_dict().items()}


def test_keys_fit_but_outputs_differ_is_a_one_line_refusal_naming_each(timm_with, blur_state, tmp_path):
    timm_with(["resnet18", "resnetblur18"])
    rng_before = torch.get_rng_state()
    found = detect_arch(blur_state)
    assert torch.equal(torch.get_rng_state(), rng_before)  # building the candidates drew no caller randomness
    assert [[c.spec for c in g] for g in found.groups] == [["torchvision/resnet18", "timm/resnet18"], ["timm/resnetblur18"]]
    torch.save(blur_state, tmp_path / "blur.pth")
    with pytest.raises(CollapseProbeError) as error:
        load_encoder_with_report(tmp_path / "blur.pth")
    message = str(error.value)
    assert "\n" not in message and "fit 3 architectures that compute 2 different outputs" in message
    assert "torchvision/resnet18 (= timm/resnet18), timm/resnetblur18" in message and "--arch" in message


def test_arch_chooses_among_them(timm_with, blur_state, tmp_path):
    timm_with(["resnet18", "resnetblur18"])
    torch.save(blur_state, tmp_path / "blur.pth")
    loaded = load_encoder_with_report(tmp_path / "blur.pth", "timm/resnetblur18")
    reference = _blur_resnet18().eval()
    reference.load_state_dict(blur_state)
    reference.fc = nn.Identity()
    with torch.no_grad():
        assert torch.equal(loaded.model(X), reference(X))


def test_identical_forwards_are_one_architecture_torchvision_named(timm_with, resnet_state):
    timm_with(["resnet18"])
    found = detect_arch(resnet_state)
    assert [c.spec for c in found.matches] == ["torchvision/resnet18"]
    assert any("same output on a test input: timm/resnet18" in note for note in found.notes)


def test_the_same_output_is_judged_relative_to_its_scale():
    base = torch.randn(2, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e6
    bump = torch.zeros_like(base)
    bump[0, 0] = 1e-5 * base.abs().max()  # float rounding of an output of that scale
    assert same_output(base, base + bump)
    bump[0, 0] = 1e-2 * base.abs().max()
    assert not same_output(base, base + bump)
    assert not same_output(base, base.reshape(4, 256))
    nan = base.clone()
    nan[1, 1] = float("nan")
    assert same_output(nan, nan.clone()) and not same_output(nan, base)
    assert group_by_output([base, base * 2, base.clone(), "cannot run"]) == [[0, 2], [1], [3]]


def test_cli_refuses_with_exit_2_quiet_or_not_and_arch_chooses(timm_with, blur_state, invoke, image_folder,
                                                                image_args, tmp_path):
    timm_with(["resnet18", "resnetblur18"])
    path = tmp_path / "blur.pth"
    torch.save(blur_state, path)
    loud = [a for a in image_args if a != "--quiet"]
    for args in (image_args, loud):
        code, stdout, stderr = invoke(["spectrum", path, "--data", image_folder, "--out", tmp_path / "o", *args])
        assert code == 2 and stdout == ""
        (line,) = stderr.strip().splitlines()
        assert line.startswith("Error: ") and "torchvision/resnet18 (= timm/resnet18), timm/resnetblur18" in line
    assert not (tmp_path / "o" / "spectrum.json").exists()
    code, _, stderr = invoke(["spectrum", path, "--arch", "timm/resnetblur18", "--data", image_folder,
                              "--out", tmp_path / "o", *image_args])
    assert code == 0, stderr


def test_real_timm_resnetblur18_is_refused_without_arch(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnetblur18", pretrained=False).eval()
    torch.save(model.state_dict(), tmp_path / "blur.pth")
    with pytest.raises(CollapseProbeError, match=r"different outputs.*timm/resnetblur18"):
        load_encoder_with_report(tmp_path / "blur.pth")
    loaded = load_encoder_with_report(tmp_path / "blur.pth", "timm/resnetblur18")
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.allclose(loaded.model(X), model(X), atol=1e-6)
