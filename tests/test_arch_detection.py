"""A bare state_dict without an arch is matched against torchvision (and timm) models by key names and
shapes, on the meta device (issue 10 item 3); a name in both libraries goes to the one the keys fit
(issue 9, --arch efficientnet_b0 on a timm state_dict)."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models._detect import detect_arch, meta_model
from collapse_probe.models.loading import load_encoder_with_report

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def no_timm(monkeypatch):
    """timm hidden: its resnetblur18 fits a resnet18 file too, with another forward (tests/cli/test_arch_forwards.py)."""
    monkeypatch.setitem(sys.modules, "timm", None)


def test_meta_build_holds_no_memory():
    model = meta_model("torchvision", "regnet_y_400mf")  # computes widths with tensors: not torch.device("meta")
    assert all(p.is_meta for p in model.parameters())


def test_resnet18_is_detected_and_named(tmp_path, no_timm):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    loaded = load_encoder_with_report(tmp_path / "w.pth")
    report = loaded.report
    assert (report.arch, report.arch_library, report.arch_detected) == ("resnet18", "torchvision", True)
    assert "arch resnet18 (torchvision, detected from its keys and shapes)" in report.summary()
    assert any(note.startswith("architecture detected from keys and shapes: torchvision/resnet18") for note in report.notes)
    assert report.to_dict()["arch_detected"] is True
    model.fc = nn.Identity()
    with torch.no_grad():
        assert torch.equal(loaded.model(X), model(X))


def test_lightly_layout_is_detected_too(no_timm):
    model = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(model.children())[:-1])
    found = detect_arch({"backbone." + k: v for k, v in backbone.state_dict().items()})
    assert [c.spec for c in found.matches] == ["torchvision/resnet18"]


def test_no_match_lists_the_closest_and_what_differs(tmp_path):
    model = torchvision.models.resnet18()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layer4.1.")}  # a block missing
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CollapseProbeError) as error:
        load_encoder_with_report(tmp_path / "cut.pt")
    message = str(error.value)
    assert "\n" not in message and "fits no torchvision" in message and "--arch" in message
    assert "torchvision/resnet18 (10 missing, 0 shape-mismatched, 0 unexpected backbone keys)" in message


def test_timm_efficientnet_b0_under_a_shared_name(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    torch.save(model.state_dict(), tmp_path / "effnet.pth")
    loaded = load_encoder_with_report(tmp_path / "effnet.pth", "efficientnet_b0")
    assert loaded.report.arch_library == "timm"
    assert any("timm's is used" in note for note in loaded.report.notes)
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.allclose(loaded.model(X), model(X), atol=1e-6)
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "tv.pth")
    assert load_encoder_with_report(tmp_path / "tv.pth", "efficientnet_b0").report.arch_library == "torchvision"


def test_identical_keys_with_other_forwards_are_refused_naming_each():
    pytest.importorskip("timm")
    found = detect_arch(torchvision.models.resnet18().state_dict())
    assert [[c.spec for c in g] for g in found.groups] == [["torchvision/resnet18", "timm/resnet18"], ["timm/resnetblur18"]]
    assert [c.spec for c in found.matches] == ["torchvision/resnet18", "timm/resnet18", "timm/resnetblur18"]


def test_several_matches_are_an_error_naming_them(tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(CollapseProbeError, match=r"fit \d+ architectures that compute \d+ different outputs .*"
                                                 r"timm/efficientnet_b0.*timm/tf_efficientnet_b0.*--arch"):
        load_encoder_with_report(tmp_path / "effnet.pth")
