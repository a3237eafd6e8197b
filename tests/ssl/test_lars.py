"""LARS against a hand computation; parameter groups; the warm-up + cosine schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe.ssl.lars import LARS, lars_param_groups, warmup_cosine


def test_two_lars_steps_match_hand_computation():
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]])
    b0 = np.array([0.1, -0.2])
    grads = [(np.array([[0.3, 0.1], [-0.2, 0.4]]), np.array([0.5, -1.0])),
             (np.array([[-0.1, 0.2], [0.0, 0.3]]), np.array([0.2, 0.1]))]
    lr, wd, mom, eta = 0.7, 0.01, 0.9, 0.002

    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    b = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = LARS([{"params": [w], "weight_decay": wd, "lars": True}, {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=lr, weight_decay=wd, momentum=mom, trust_coefficient=eta)
    # the reference, written out in numpy
    ew, eb, mw, mb = w0.copy(), b0.copy(), np.zeros_like(w0), np.zeros_like(b0)
    for gw, gb in grads:
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
        u = gw + wd * ew
        q = eta * np.linalg.norm(ew) / np.linalg.norm(u)
        mw = mom * mw + q * u
        ew = ew - lr * mw
        mb = mom * mb + gb  # bias: no decay, no trust ratio
        eb = eb - lr * mb
    np.testing.assert_allclose(w.detach().numpy(), ew, rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), eb, rtol=1e-12)


def test_zero_weight_uses_unit_trust_ratio():
    p = nn.Parameter(torch.zeros(3, 2))
    opt = LARS([p], lr=0.5, weight_decay=0.0, momentum=0.0, trust_coefficient=0.001)
    p.grad = torch.ones(3, 2)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3, 2), -0.5))


def test_param_groups_exclude_biases_and_norms():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = lars_param_groups([net], 1e-6)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert decay["lars"] and not no_decay["lars"] and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("step", [0, 3, 9, 10, 55, 99])
def test_warmup_cosine_formula(step):
    total, warm, final = 100, 10, 0.001
    if step < warm:
        expected = (step + 1) / warm
    else:
        expected = final + (1 - final) * (1 + math.cos(math.pi * (step - warm) / (total - warm))) / 2
    assert warmup_cosine(step, total_steps=total, warmup_steps=warm, final_ratio=final) == pytest.approx(expected)
    assert warmup_cosine(total, total_steps=total, warmup_steps=warm, final_ratio=final) == pytest.approx(final)
