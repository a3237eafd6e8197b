"""(B, C, L) outputs of 1-d convolutions have C features (issue 17 item 9); spectrum() leaves the
caller's model where it was (item 13); under torchrun a bare "cuda" is this process's GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import spectrum
from collapse_probe._utils import ranks
from collapse_probe.probe.loop import on_device
from collapse_probe.probe.options import ProbeOptions


def _numpy_eigenvalues(z: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1]


def test_a_conv1d_output_is_pooled_over_its_length_not_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 16, 5), nn.ReLU())
    x = torch.randn(200, 3, 24)
    result = spectrum(model, [x[:100], x[100:]], progress=False)
    with torch.no_grad():
        expected = _numpy_eigenvalues(model(x).double().mean(dim=2).numpy())  # (200, 16, 20) -> mean over L
    assert result.dim == 16 and result.extra["pool"].startswith("avg over L")
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-5 * expected[0])  # float32 pooling
    tokens = spectrum(nn.Sequential(nn.Linear(3, 7)), [torch.randn(50, 10, 3)], progress=False)
    assert tokens.dim == 7  # (B, T, D) tokens keep D as the feature axis


class _Recorder(nn.Linear):
    """A model whose .to() calls are recorded (only a CPU exists here)."""

    def __init__(self):
        super().__init__(2, 2)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0]))
        return self


def test_the_model_goes_back_to_its_device_on_every_exit(monkeypatch):
    model = _Recorder()
    monkeypatch.setattr("collapse_probe.probe.loop.resolve_device",
                        lambda device, model=None, local_rank=None: torch.device("meta" if device else "cpu"))
    with on_device(model, ProbeOptions(device="elsewhere")) as device:
        assert device.type == "meta"
    with pytest.raises(RuntimeError), on_device(model, ProbeOptions(device="elsewhere")):
        raise RuntimeError("the probe failed")
    assert model.moves == ["meta", "cpu", "meta", "cpu"]


def test_spectrum_on_the_models_own_device_does_not_move_it():
    model = nn.Linear(3, 2)
    before = [p.data_ptr() for p in model.parameters()]
    spectrum(model, [torch.randn(10, 3)], device="cpu", progress=False)
    assert [p.data_ptr() for p in model.parameters()] == before


def test_local_rank_is_read_only_under_torch_distributed(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert ranks.local_rank() is None  # no process group: not a torchrun worker
    monkeypatch.setattr(ranks, "is_distributed", lambda: True)
    assert ranks.local_rank() == 3


def test_max_samples_is_shared_between_processes_so_the_total_is_the_same(monkeypatch):
    from collapse_probe.probe import options

    shares = []
    for rank in range(3):
        monkeypatch.setattr(options, "world_size", lambda: 3)
        monkeypatch.setattr(options, "rank", lambda rank=rank: rank)
        shares.append(ProbeOptions(max_samples=10).rows_for_this_process())
    assert shares == [4, 3, 3]
