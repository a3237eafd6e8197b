"""Checkpoint loading: every supported format gives the reference network's exact outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models._fit import best_prefix
from collapse_probe.models._registry import build_encoder, find_classifier, strip_classifier
from collapse_probe.models.loading import (
    PartialLoadWarning,
    load_encoder,
    load_encoder_with_report,
)

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
    assert any("projector 'projector' rebuilt" in note for note in loaded.report.notes)
    with torch.no_grad():
        assert torch.equal(loaded.model.backbone(X), expected)
        assert torch.allclose(_output(loaded.model), head(expected), atol=1e-6)


# ----------------------------------------------------------------------------- honest loading (issue 8, rows 1-4)


@pytest.fixture(scope="module")
def other_resnets():
    """Random resnet34 and resnet50 state_dicts: files of the wrong arch for a resnet18."""
    torch.manual_seed(2)
    return {name: getattr(torchvision.models, name)().state_dict() for name in ("resnet34", "resnet50")}


def test_shape_mismatched_keys_are_refused_unless_allow_partial(tmp_path, other_resnets):
    path = tmp_path / "r50.pt"
    torch.save(other_resnets["resnet50"], path)
    with pytest.raises(CollapseProbeError) as error:
        load_encoder(path, "resnet18")
    message = str(error.value)
    assert "\n" not in message
    assert "23 shape-mismatched keys (layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message
    assert "--allow-partial" in message
    with pytest.warns(PartialLoadWarning, match="23 shape-mismatched"):
        loaded = load_encoder_with_report(path, "resnet18", allow_partial=True)
    assert loaded.report.partial and len(loaded.report.mismatched_keys) == 23
    assert "PARTIAL LOAD" in loaded.report.summary()


def test_unexpected_backbone_keys_mean_a_wrong_arch(tmp_path, other_resnets):
    """A resnet34 file fills every tensor of a resnet18 (120/120) and leaves blocks over."""
    path = tmp_path / "r34.pt"
    torch.save(other_resnets["resnet34"], path)
    with pytest.raises(CollapseProbeError, match=r"96 unexpected keys that look like backbone weights "
                                                 r"\(layer1\.2\.conv1\.weight, .*a wrong --arch\?"):
        load_encoder(path, "resnet18")
    with pytest.warns(PartialLoadWarning):
        report = load_encoder_with_report(path, "resnet18", allow_partial=True).report
    assert (report.n_loaded, report.n_expected) == (120, 120)
    assert len(report.unexpected_backbone_keys) == 96 and "fc.weight" not in report.unexpected_backbone_keys
    assert len(report.unexpected_keys) == 98  # the classifier is dropped as a known head


def test_known_heads_stay_allowed_and_reported(tmp_path, reference):
    state, expected = reference
    weights = {"backbone." + k: v for k, v in state.items() if not k.startswith("fc.")}
    heads = {"backbone.fc.weight": torch.zeros(4, 512), "head.last_layer.weight": torch.zeros(3, 3),
             "predictor.0.weight": torch.zeros(2, 2), "prototypes.weight": torch.zeros(5, 2),
             "queue": torch.zeros(8, 2), "queue_ptr": torch.zeros(1), "criterion.center": torch.zeros(2),
             "momentum_backbone.layer1.0.conv1.weight": torch.zeros(1), "target_network.w": torch.zeros(1)}
    torch.save(weights | heads, tmp_path / "heads.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete load warns nothing
        loaded = load_encoder_with_report(tmp_path / "heads.pt", "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert set(loaded.report.unexpected_keys) == set(heads) and loaded.report.unexpected_backbone_keys == ()
    assert not loaded.report.partial


def test_parameters_only_checkpoint_is_refused(tmp_path, reference):
    """dict(model.named_parameters()) has no BatchNorm running statistics."""
    state, _ = reference
    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    with torch.no_grad():  # trained statistics, as any trained model has, so the missing ones matter
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "params.pt"
    torch.save({k: v.detach() for k, v in model.named_parameters()}, path)
    model.fc = nn.Identity()
    expected = _output(model.eval())
    with pytest.raises(CollapseProbeError, match=r"40 of the model's 120 tensors missing \(bn1\.running_mean, "
                                                 r".*save model\.state_dict\(\), not named_parameters\(\)"):
        load_encoder(path, "resnet18")
    with pytest.warns(PartialLoadWarning, match="40 of the model's 120 tensors missing"):
        partial = load_encoder(path, "resnet18", allow_partial=True)  # load_encoder warns what it returns
    assert (_output(partial) - expected).abs().max() > 0.1  # why it is refused


def test_missing_num_batches_tracked_is_harmless(tmp_path, reference):
    state, expected = reference
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_encoder_with_report(tmp_path / "w.pt", "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert len(loaded.report.missing_keys) == 20 and loaded.report.missing_weights == ()
    assert not loaded.report.partial


@pytest.mark.parametrize(("online", "momentum"), [
    ("module.encoder_q.", "module.encoder_k."),  # MoCo v1/v2
    ("online_network.", "target_network."),  # BYOL
    ("backbone.", "momentum_backbone."),  # solo-learn
    ("student.", "teacher."),  # distillation-style prefixes in one state_dict
])
def test_online_encoder_is_chosen_by_name_not_key_order(tmp_path, reference, online, momentum):
    state, expected = reference
    rng = torch.Generator().manual_seed(3)
    other = {k: torch.randn(v.shape, generator=rng).to(v.dtype) if v.is_floating_point() else v
             for k, v in state.items()}
    weights = {momentum + k: v for k, v in other.items()}  # the momentum encoder first in the file
    weights |= {online + k: v for k, v in state.items()} | {"module.queue": torch.zeros(4, 8)}
    torch.save({"state_dict": weights}, tmp_path / "moco.pth.tar")
    loaded = load_encoder_with_report(tmp_path / "moco.pth.tar", "resnet18")
    assert torch.equal(_output(loaded.model), expected)
    assert loaded.report.stripped_prefix == online
    assert loaded.report.ignored_prefixes == (momentum,)
    assert loaded.report.unexpected_backbone_keys == ()
    summary = loaded.report.summary()
    assert f"stripped prefix {online!r}" in summary and f"ignored candidate prefixes {momentum!r}" in summary


def test_prefix_ties_without_a_telling_name_are_not_broken_by_key_order(tmp_path, reference):
    state, _ = reference
    weights = {"tower_b." + k: v for k, v in state.items()} | {"tower_a." + k: v for k, v in state.items()}
    torch.save(weights, tmp_path / "two.pt")
    report = load_encoder_with_report(tmp_path / "two.pt", "resnet18").report
    assert report.stripped_prefix == "tower_a." and report.ignored_prefixes == ("tower_b.",)
    assert any(note.startswith("warning:") and "tower_b." in note for note in report.notes)


def test_projector_comes_from_the_online_network(tmp_path, reference):
    state, expected = reference
    head = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    weights = {"target_net.encoder." + k: torch.zeros_like(v) for k, v in state.items() if not k.startswith("fc.")}
    weights |= {"target_net.projector." + k: torch.zeros_like(v) for k, v in head.state_dict().items()}
    weights |= {"online_net.encoder." + k: v for k, v in state.items() if not k.startswith("fc.")}
    weights |= {"online_net.projector." + k: v for k, v in head.state_dict().items()}
    torch.save(weights, tmp_path / "byol.pt")
    loaded = load_encoder_with_report(tmp_path / "byol.pt", "resnet18")
    assert loaded.report.stripped_prefix == "online_net.encoder."
    with torch.no_grad():
        assert torch.allclose(_output(loaded.model), head(expected), atol=1e-6)
