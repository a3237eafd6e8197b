"""Checkpoint loading: every supported format gives the reference network's exact outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from collapse_probe.checkpoints import best_prefix, load_encoder, load_encoder_with_report
from collapse_probe.encoders import build_encoder, find_classifier, strip_classifier
from collapse_probe.errors import CollapseProbeError

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    headless = torchvision.models.resnet18().eval()
    headless.load_state_dict(state)
    headless.fc = nn.Identity()
    with torch.no_grad():
        expected = headless(X)
    return state, expected


def _output(model):
    with torch.no_grad():
        return model(X)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_state_dict(tmp_path, reference, suffix):
    state, expected = reference
    path = tmp_path / f"w{suffix}"
    torch.save(state, path)
    loaded = load_encoder_with_report(path, "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert loaded.report.n_loaded == len(state) - 2  # fc.weight, fc.bias dropped with the classifier
    assert loaded.report.unexpected_keys == ("fc.weight", "fc.bias")
    assert loaded.report.missing_keys == ()
    assert loaded.default_layers == {"fc": "representation"}


def test_safetensors(tmp_path, reference):
    state, expected = reference
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert torch.equal(_output(load_encoder(path, "resnet18")), expected)
    with pytest.raises(CollapseProbeError, match="--arch"):
        load_encoder(path)


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [
        (lambda sd: {"state_dict": sd, "epoch": 3}, "backbone."),  # Lightning / solo-learn
        (lambda sd: {"model": sd, "optimizer": {}}, "module.backbone."),  # DirectCLR public trainer
        (lambda sd: {"model": sd}, "_orig_mod."),  # torch.compile
        (lambda sd: {"encoder": sd}, "module."),
        (lambda sd: sd, "module._orig_mod."),
    ],
)
def test_wrapped_and_prefixed(tmp_path, reference, wrap, prefix):
    state, expected = reference
    weights = {prefix + k: v for k, v in state.items() if not k.startswith("fc.")}
    weights["classifier.weight"] = torch.zeros(4, 512)  # an online head that is not part of the backbone
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(weights), path)
    loaded = load_encoder_with_report(path, "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert loaded.report.stripped_prefix == prefix
    assert loaded.report.unexpected_keys == ("classifier.weight",)


def test_dino_uses_teacher(tmp_path, reference):
    state, expected = reference
    student = {"module.backbone." + k: torch.randn_like(v.float()).to(v.dtype) for k, v in state.items()}
    teacher = {"backbone." + k: v for k, v in state.items()} | {"head.last_layer.weight": torch.zeros(3, 3)}
    path = tmp_path / "dino.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 100}, path)
    loaded = load_encoder_with_report(path, "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert loaded.report.source == "teacher"
    assert any("teacher" in note for note in loaded.report.notes)


def test_prefix_only_stripped_at_start():
    assert best_prefix(["encoder.module.w"], {"module.w"}) == "encoder."
    assert best_prefix(["a.module.w"], {"a.w"}) == ""  # never removed from the middle


def test_mostly_missing_is_an_error_unless_allow_partial(tmp_path, reference):
    state, _ = reference
    partial = {k: v for k, v in state.items() if k.startswith(("conv1", "bn1"))}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(CollapseProbeError, match="allow-partial"):
        load_encoder(path, "resnet18")
    loaded = load_encoder_with_report(path, "resnet18", allow_partial=True)
    assert torch.equal(loaded.model.conv1.weight, state["conv1.weight"])
    assert len(loaded.report.missing_keys) == len(state) - 2 - len(partial)


def test_wrong_arch_is_an_error(tmp_path, reference):
    state, _ = reference
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(CollapseProbeError, match="wrong"):
        load_encoder(path, "resnet50")


def test_torchscript_and_export(tmp_path, reference):
    state, expected = reference
    model = build_encoder("resnet18").eval()
    strip_classifier(model)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    torch.jit.save(torch.jit.trace(model, X), tmp_path / "ts.pt")
    assert torch.allclose(_output(load_encoder(tmp_path / "ts.pt")), expected, atol=1e-5)
    program = torch.export.export(model, (X,))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_encoder_with_report(tmp_path / "model.pt2")
    assert torch.allclose(_output(loaded.model), expected, atol=1e-5)
    assert loaded.default_layers == {}


class _Planted:
    """Unpickling this creates the file named in its state."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Planted(target)}, path)
    with pytest.raises(CollapseProbeError, match="--trust-checkpoint"):
        load_encoder(path, "resnet18")
    assert not target.exists()
    # control: full unpickling does run the payload, so the assertion above can fail
    with pytest.raises(CollapseProbeError):
        load_encoder(path, "resnet18", trust_checkpoint=True)
    assert target.exists()


def test_trusted_pickled_module(tmp_path, reference):
    state, expected = reference
    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(CollapseProbeError, match="--trust-checkpoint"):
        load_encoder(tmp_path / "full.pt")
    assert torch.equal(_output(load_encoder(tmp_path / "full.pt", trust_checkpoint=True)), expected)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(CollapseProbeError, match="not a PyTorch checkpoint"):
        load_encoder(tmp_path / "junk.pt", "resnet18")


def test_encoder_registry():
    assert find_classifier(torchvision.models.efficientnet_b0()) == "classifier.1"
    assert find_classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) is None
    with pytest.raises(CollapseProbeError, match="resnet18"):
        build_encoder("resnet181")
    with pytest.raises(CollapseProbeError, match="cannot import"):
        build_encoder("no_such_module_xyz:make")
    with pytest.raises(CollapseProbeError, match="not a torch.nn.Module"):
        build_encoder("builtins:dict")


def test_projector_rebuilt_from_solo_learn_style_keys(tmp_path, reference):
    state, expected = reference
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8)).eval()
    head[1].running_mean.uniform_(-1, 1)  # non-default statistics, so a wrong load would show
    weights = {"backbone." + k: v for k, v in state.items() if not k.startswith("fc.")}
    weights |= {"projector." + k: v for k, v in head.state_dict().items()}
    weights["classifier.weight"] = torch.zeros(10, 512)
    torch.save({"state_dict": weights}, tmp_path / "solo.ckpt")
    loaded = load_encoder_with_report(tmp_path / "solo.ckpt", "resnet18")
    assert loaded.default_layers == {"backbone": "representation", "projector": "embedding"}
    assert loaded.report.unexpected_keys == ("classifier.weight",)
    assert any("projector rebuilt" in note for note in loaded.report.notes)
    with torch.no_grad():
        assert torch.equal(loaded.model.backbone(X), expected)
        assert torch.allclose(_output(loaded.model), head(expected), atol=1e-6)
