"""Key layouts of SSL libraries loaded onto torchvision names, their projectors rebuilt (issue 10 item 4).

Each layout is built the way that library builds its model (module names and nesting from its
source), from one random resnet18, so the probed outputs can be checked against that network.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from collapse_probe.models.loading import load_encoder_with_report

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # trained-looking statistics, so a wrong load shows
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _bn1d(n: int, affine: bool = True) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(n, affine=affine)
    bn.running_mean.uniform_(-0.5, 0.5)
    return bn


@pytest.fixture(scope="module")
def online():
    """The online resnet18, its representation of X, and a different (momentum/target) resnet18."""
    model = _resnet(0)
    headless = _resnet(0)
    headless.fc = nn.Identity()
    with torch.no_grad():
        return model, headless(X), _resnet(1)


def _load(tmp_path, checkpoint, arch="resnet18"):
    path = tmp_path / "ckpt.pth"
    torch.save(checkpoint, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete load warns nothing
        return load_encoder_with_report(path, arch)


def _check(loaded, representation, head=None):
    with torch.no_grad():
        if head is None:
            assert loaded.default_layers == {"fc": "representation"}
            assert torch.allclose(loaded.model(X), representation, atol=1e-6)
        else:
            assert loaded.default_layers == {"backbone": "representation", "projector": "embedding"}
            assert torch.allclose(loaded.model.backbone(X), representation, atol=1e-6)
            assert torch.allclose(loaded.model(X), head.eval()(representation), atol=1e-5)
    assert not loaded.report.partial and loaded.report.unexpected_backbone_keys == ()


def test_lightly_sequential_of_children(tmp_path, online):
    """lightly: backbone = nn.Sequential(*list(resnet.children())[:-1]); SimCLRProjectionHead(512, 512, 128)
    is ProjectionHead.layers = [Linear(bias=False), BatchNorm1d, ReLU, Linear]; MoCo adds *_momentum copies."""
    model, representation, other = online
    head = nn.Sequential(nn.Linear(512, 64, bias=False), _bn1d(64), nn.ReLU(), nn.Linear(64, 16))
    lightning = nn.Module()
    lightning.backbone = nn.Sequential(*list(model.children())[:-1])
    lightning.projection_head = nn.Module()
    lightning.projection_head.layers = head
    lightning.backbone_momentum = nn.Sequential(*list(other.children())[:-1])
    lightning.projection_head_momentum = nn.Module()
    lightning.projection_head_momentum.layers = nn.Sequential(nn.Linear(512, 64, bias=False), _bn1d(64),
                                                              nn.ReLU(), nn.Linear(64, 16))
    state = lightning.state_dict()
    assert "backbone.4.0.conv1.weight" in state and "projection_head.layers.3.bias" in state
    loaded = _load(tmp_path, {"state_dict": state, "epoch": 3, "global_step": 10})
    _check(loaded, representation, head)
    assert loaded.report.stripped_prefix == "backbone." and loaded.report.ignored_prefixes == ("backbone_momentum.",)
    assert any("lightly's layout" in note and "4 -> layer1" in note for note in loaded.report.notes)
    assert any("projector 'projection_head.layers' rebuilt" in note for note in loaded.report.notes)


def _moco_v2(model: nn.Module) -> nn.Module:
    """MoCo v2 (facebookresearch/moco builder.py, mlp=True): fc = Sequential(Linear(d, d), ReLU(), fc)."""
    model.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    return model


def test_moco_v2_encoder_q_and_its_mlp_head(tmp_path, online):
    model, representation, other = online
    moco = nn.Module()
    moco.encoder_q = _moco_v2(_resnet(0))
    moco.encoder_k = _moco_v2(other)
    moco.register_buffer("queue", torch.randn(128, 64))
    moco.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    state = {"module." + k: v for k, v in moco.state_dict().items()}  # DistributedDataParallel
    assert "module.encoder_q.fc.2.weight" in state
    loaded = _load(tmp_path, {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, arch=None)
    _check(loaded, representation, moco.encoder_q.fc)
    assert loaded.report.stripped_prefix == "module.encoder_q."
    assert loaded.report.ignored_prefixes == ("module.encoder_k.",)
    assert any("projector 'module.encoder_q.fc' rebuilt" in note for note in loaded.report.notes)


def _mocov3_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """moco-v3 builder.py _build_mlp: Linear(bias=False), BN, ReLU ..., last Linear, BN(affine=False)."""
    layers = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            layers += [_bn1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(_bn1d(dim2, affine=False))
    return nn.Sequential(*layers)


def test_moco_v3_base_and_momentum_encoders(tmp_path, online):
    _, representation, other = online
    moco = nn.Module()
    moco.base_encoder = _resnet(0)
    moco.momentum_encoder = other
    del moco.base_encoder.fc, moco.momentum_encoder.fc
    moco.base_encoder.fc = _mocov3_mlp(2, 512, 256, 32)
    moco.momentum_encoder.fc = _mocov3_mlp(2, 512, 256, 32)
    moco.predictor = _mocov3_mlp(2, 32, 256, 32, last_bn=False)
    state = {"module." + k: v for k, v in moco.state_dict().items()}
    assert "module.base_encoder.fc.4.running_var" in state and "module.base_encoder.fc.4.weight" not in state
    loaded = _load(tmp_path, {"epoch": 100, "arch": "resnet18", "state_dict": state, "scaler": {}})
    _check(loaded, representation, moco.base_encoder.fc)
    assert loaded.report.stripped_prefix == "module.base_encoder."
    assert loaded.report.ignored_prefixes == ("module.momentum_encoder.",)


def test_byol_online_and_target_networks(tmp_path, online):
    """lucidrains/byol-pytorch: NetWrapper(net, projector=MLP) as online_encoder, a deepcopy as
    target_encoder, online_predictor = MLP; MLP = Sequential(Linear, BatchNorm1d, ReLU, Linear)."""
    model, representation, other = online

    def wrapper(net):
        wrapped = nn.Module()
        wrapped.net = net
        wrapped.projector = nn.Sequential(nn.Linear(512, 64), _bn1d(64), nn.ReLU(inplace=True), nn.Linear(64, 16))
        return wrapped

    byol = nn.Module()
    byol.target_encoder = wrapper(other)  # the target first: order in the file must not matter
    byol.online_encoder = wrapper(_resnet(0))
    byol.online_predictor = nn.Sequential(nn.Linear(16, 64), _bn1d(64), nn.ReLU(inplace=True), nn.Linear(64, 16))
    loaded = _load(tmp_path, byol.state_dict())
    _check(loaded, representation, byol.online_encoder.projector)
    assert loaded.report.stripped_prefix == "online_encoder.net."
    assert loaded.report.ignored_prefixes == ("target_encoder.net.",)


def test_simsiam_encoder_fc_projector(tmp_path, online):
    """facebookresearch/simsiam builder.py: encoder.fc = 3-layer MLP ending in BatchNorm1d(affine=False)."""
    _, representation, _ = online
    simsiam = nn.Module()
    simsiam.encoder = _resnet(0)
    last = nn.Linear(512, 32)
    simsiam.encoder.fc = nn.Sequential(nn.Linear(512, 512, bias=False), _bn1d(512), nn.ReLU(inplace=True),
                                       nn.Linear(512, 512, bias=False), _bn1d(512), nn.ReLU(inplace=True),
                                       last, _bn1d(32, affine=False))
    simsiam.predictor = nn.Sequential(nn.Linear(32, 16, bias=False), _bn1d(16), nn.ReLU(inplace=True),
                                      nn.Linear(16, 32))
    state = {"module." + k: v for k, v in simsiam.state_dict().items()}
    loaded = _load(tmp_path, {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": {}})
    _check(loaded, representation, simsiam.encoder.fc)
    assert loaded.report.stripped_prefix == "module.encoder."


def _vissl_trunk(model):
    """VISSL's ResNeXt trunk: torchvision's modules in an nn.ModuleDict called _feature_blocks."""
    return {"_feature_blocks." + k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def test_vissl_nested_and_trunk_prefixed(tmp_path, online):
    model, representation, _ = online
    heads = {"0.clf.0.weight": torch.randn(128, 512), "0.clf.0.bias": torch.zeros(128)}
    nested = {"classy_state_dict": {"base_model": {"model": {"trunk": _vissl_trunk(model), "heads": heads},
                                                   "meta": {}}}, "phase_idx": 10, "iteration": 100}
    loaded = _load(tmp_path, nested)
    _check(loaded, representation)
    assert loaded.report.source == "classy_state_dict.base_model.model"
    assert loaded.report.stripped_prefix == "trunk._feature_blocks."
    flat = {"trunk." + k: v for k, v in _vissl_trunk(model).items()} | {"heads." + k: v for k, v in heads.items()}
    loaded = _load(tmp_path, {"model_state_dict": flat})
    _check(loaded, representation)
    assert set(loaded.report.unexpected_keys) == {"heads.0.clf.0.weight", "heads.0.clf.0.bias"}


def test_mmselfsup_backbone_neck_and_momentum_encoder(tmp_path, online):
    """mmselfsup 1.x MoCo v2: backbone (mmcv ResNet, torchvision names), neck = MoCoV2Neck (mlp: Linear,
    ReLU, Linear), momentum_encoder = EMA(Sequential(backbone, neck)) with a `steps` buffer, queue."""
    model, representation, other = online
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    neck = nn.Module()
    neck.mlp = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Linear(256, 32))
    state = {"backbone." + k: v for k, v in backbone.items()} | {"neck." + k: v for k, v in neck.state_dict().items()}
    state |= {"momentum_encoder.module.0." + k: v for k, v in other.state_dict().items() if not k.startswith("fc.")}
    state |= {"momentum_encoder.module.1." + k: v for k, v in neck.state_dict().items()}
    state |= {"momentum_encoder.steps": torch.tensor(5), "queue": torch.randn(32, 64), "queue_ptr": torch.zeros(1)}
    loaded = _load(tmp_path, {"meta": {"epoch": 200}, "state_dict": state})
    _check(loaded, representation, neck.mlp)
    assert loaded.report.stripped_prefix == "backbone."
    assert loaded.report.ignored_prefixes == ("momentum_encoder.module.0.",)
