"""Projector variants: shapes, what is trainable, orthogonality kept, fixed low rank."""

from __future__ import annotations

import pytest
import torch

from collapse_probe.ssl.config import TrainConfig
from collapse_probe.ssl.lars import LARS, lars_param_groups
from collapse_probe.ssl.losses import info_nce
from collapse_probe.ssl.model import build_model
from collapse_probe.ssl.projectors import build_projector, projector_dims

REP = 16  # smallcnn width 4


def _model(**kw):
    return build_model(TrainConfig(arch="smallcnn", width=4, projector_dim=8, **kw))


@pytest.mark.parametrize(
    ("projector", "out", "trainable"),
    [("mlp", 8, True), ("linear", 8, True), ("none", REP, False), ("orthogonal", REP, True),
     ("diagonal", REP, True), ("lowrank", REP, False), ("lowrank-diagonal", REP, False)],
)
def test_shapes_and_trainability(projector, out, trainable):
    model, arch = _model(projector=projector, d0=5)
    r, z = model(torch.randn(6, 3, 32, 32), return_representation=True)
    assert r.shape == (6, REP) and z.shape == (6, out)
    assert arch["projector_dims"][0] == REP and arch["projector_dims"][-1] == out
    params = list(model.projector.parameters()) if model.projector is not None else []
    assert any(p.requires_grad for p in params) == trainable


def test_orthogonal_stays_orthogonal_after_training_steps():
    proj = build_projector("orthogonal", projector_dims("orthogonal", 12))
    opt = LARS(lars_param_groups([proj], 0.0), lr=5.0, trust_coefficient=0.1)
    x1, x2 = torch.randn(32, 12), torch.randn(32, 12)
    w_before = proj.weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        info_nce(proj(x1), proj(x2)).backward()
        opt.step()
    w = proj.weight.detach()
    assert not torch.allclose(w, w_before)
    torch.testing.assert_close(w @ w.T, torch.eye(12), atol=1e-5, rtol=0)


def test_lowrank_is_fixed_rank_d0_and_saved():
    proj = build_projector("lowrank", [20, 20], d0=7, seed=3)
    m = proj.matrix
    assert list(proj.parameters()) == []
    s = torch.linalg.svdvals(m.double())
    torch.testing.assert_close(s[:7], torch.ones(7, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(s[7:].max()) < 1e-6
    assert "matrix" in proj.state_dict()
    again = build_projector("lowrank", [20, 20], d0=7, seed=3)
    assert torch.equal(again.matrix, m)


def test_lowrank_diagonal_gives_the_directclr_loss():
    torch.manual_seed(0)
    model_d, _ = _model(method="directclr", d0=5)
    model_p, _ = _model(projector="lowrank-diagonal", d0=5)
    model_p.backbone.load_state_dict(model_d.backbone.state_dict())
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a = info_nce(model_d(x1), model_d(x2))
        b = info_nce(model_p(x1), model_p(x2))
        z = model_p(x1)
    torch.testing.assert_close(a, b)
    assert float(z[:, 5:].abs().max()) == 0.0


def test_diagonal_starts_at_identity():
    proj = build_projector("diagonal", [6, 6])
    x = torch.randn(3, 6)
    torch.testing.assert_close(proj(x), x)


@pytest.mark.parametrize("projector", ["mlp", "linear", "none", "orthogonal", "diagonal", "lowrank", "lowrank-diagonal"])
def test_every_projector_round_trips_through_a_checkpoint_dict(projector):
    from collapse_probe.ssl.checkpoint import FORMAT, build_model_from_checkpoint

    model, arch = _model(projector=projector, d0=5, seed=7)
    with torch.no_grad():  # move trainable weights away from their initial values
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    clone = build_model_from_checkpoint({"format": FORMAT, "arch": arch, "model": model.state_dict()})
    x = torch.randn(4, 3, 16, 16)
    model.eval(), clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))
