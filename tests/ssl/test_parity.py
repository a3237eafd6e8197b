"""Parity with the DirectCLR code: per-view BatchNorm, a bias-free linear projector, the online
classifier (a Linear on view 1 in the LARS group), and the linear probe without standardisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_probe.ssl import build_model, preset_config, train
from collapse_probe.ssl.config import TrainConfig
from collapse_probe.ssl.data import train_stream
from collapse_probe.ssl.distributed import dist_info
from collapse_probe.ssl.evaluate import linear_probe
from collapse_probe.ssl.model import build_model_from_arch
from collapse_probe.ssl.run import _TrainNet, online_head, param_groups


def _tiny(out, **kw):
    base = dict(width=4, batch_size=32, max_steps_per_epoch=1, epochs=1, warmup_epochs=1, monitor_every=0,
                projector_dim=8, log_every=0, threads=1, online_probe=False, out=str(out))
    return preset_config("demo", **{**base, **kw})


@pytest.mark.parametrize("joint", [False, True])
def test_batchnorm_running_stats_after_one_step_match_a_hand_computation(tmp_path, joint):
    config = _tiny(tmp_path, joint_batchnorm=joint)
    initial, _ = build_model(config)  # train() seeds and builds the same initial weights
    x1, x2, _ = next(iter(train_stream(config, dist_info(), torch.device("cpu")).epoch(0)))
    bn = train(config).model.backbone.features[0][1]

    conv = initial.backbone.features[0][0].double()
    with torch.no_grad():
        a1, a2 = conv(x1.double()), conv(x2.double())
    m = bn.momentum

    def stats(a):  # per-channel batch mean and unbiased variance, what BatchNorm feeds its running stats
        return a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=True)

    if joint:  # one update from the pooled batch
        mean, var = stats(torch.cat([a1, a2]))
        expected_mean, expected_var = m * mean, (1 - m) + m * var
    else:  # two updates, view 1 then view 2, each from its own batch (the DirectCLR code's two passes)
        (mean1, var1), (mean2, var2) = stats(a1), stats(a2)
        expected_mean = (1 - m) * m * mean1 + m * mean2
        expected_var = (1 - m) * ((1 - m) + m * var1) + m * var2
    torch.testing.assert_close(bn.running_mean.double(), expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), expected_var, rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == (1 if joint else 2)


def test_per_view_pass_keeps_views_apart_and_joint_pass_pools_them():
    model, _ = build_model(TrainConfig(arch="smallcnn", width=4, projector="mlp", projector_dim=8))
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    other = x2 * 3 + 1
    for joint in (False, True):
        net = _TrainNet(model, None, joint_batchnorm=joint).train()
        z, logits = net(x1, x2)
        z_other, _ = net(x1, other)
        assert logits is None and z.shape == (16, 8)
        same_view1 = torch.allclose(z[:8], z_other[:8], atol=1e-6)
        assert same_view1 is (not joint)  # per view: z1 depends on view 1's batch only
        if not joint:
            torch.testing.assert_close(z[:8], model(x1))  # one pass per view == the model on that view alone


def test_linear_projector_has_no_bias_and_old_checkpoints_still_load():
    model, arch = build_model(TrainConfig(arch="smallcnn", width=4, projector="linear", projector_dim=8))
    assert model.projector.bias is None and arch["projector_bias"] is False
    old_arch = {k: v for k, v in arch.items() if k != "projector_bias"}  # written before the bias was dropped
    old = build_model_from_arch(old_arch)
    assert old.projector.bias is not None
    old.load_state_dict(old.state_dict(), strict=True)
    mlp_arch = build_model(TrainConfig(arch="smallcnn", width=4, projector="mlp"))[1]
    assert "projector_bias" not in mlp_arch


def test_online_head_lars_is_a_linear_on_view_1_in_the_lars_groups():
    config = TrainConfig(arch="smallcnn", width=4, projector="mlp", projector_dim=8, lr=4.8, weight_decay=1e-6)
    model, arch = build_model(config)
    head = online_head("lars", arch["rep_dim"], 10)
    assert isinstance(head, nn.Linear)
    groups = param_groups(model, head, config)
    assert len(groups) == 2 and all("lr" not in g for g in groups)  # every group runs at config.lr
    lars = {id(p) for p in groups[0]["params"]}
    plain = {id(p) for p in groups[1]["params"]}
    assert groups[0]["lars"] and groups[0]["weight_decay"] == 1e-6 and id(head.weight) in lars
    assert not groups[1]["lars"] and groups[1]["weight_decay"] == 0.0 and id(head.bias) in plain

    net = _TrainNet(model, head, head_views=1).train()
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    _, logits = net(x1, x2)
    assert logits.shape == (6, 10)
    with torch.no_grad():  # computed from view 1's representation, per-view BatchNorm
        torch.testing.assert_close(logits, head(model.backbone(x1)))


def test_online_head_sgd_bn_keeps_its_own_group_and_both_views():
    config = TrainConfig(arch="smallcnn", width=4, projector="mlp", projector_dim=8, online_head="sgd-bn", online_lr=0.1)
    model, arch = build_model(config)
    head = online_head("sgd-bn", arch["rep_dim"], 10)
    groups = param_groups(model, head, config)
    assert len(groups) == 3 and groups[2]["lr"] == 0.1 and not groups[2]["lars"]
    _, logits = _TrainNet(model, head, head_views=2).train()(torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16))
    assert logits.shape == (12, 10)


def test_linear_probe_without_standardisation_sees_a_collapsed_direction_as_collapsed():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 8
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    x[:, 0] *= 1e-4  # the label lives in a direction of variance 1e-8: numerically collapsed
    x[:, 1:] *= 3.0
    tr, va = slice(0, 300), slice(300, n)
    standardised = linear_probe(x[tr], y[tr], x[va], y[va], epochs=50, lr=0.05)
    raw = linear_probe(x[tr], y[tr], x[va], y[va], epochs=50, lr=0.05, standardize=False)
    assert standardised.top1 > 0.9  # standardising rescales the collapsed direction back to unit variance
    assert raw.top1 < 0.7  # on the raw features it stays (nearly) invisible

    # standardize=False on features standardised by hand is the standardised probe, exactly
    mean, std = x[tr].mean(0), x[tr].std(0)
    by_hand = linear_probe((x[tr] - mean) / std, y[tr], (x[va] - mean) / std, y[va], epochs=50, lr=0.05,
                           standardize=False)
    assert by_hand.top1 == standardised.top1 and by_hand.train_top1 == standardised.train_top1


def test_linear_probe_is_seeded_whatever_the_global_rng():
    x = torch.randn(120, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        results.append(linear_probe(x[:90], y[:90], x[90:], y[90:], epochs=3))
    assert results[0] == results[1]
