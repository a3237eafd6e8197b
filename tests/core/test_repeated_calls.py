"""A layer that runs more than once per forward (siamese views, weight tying) is refused or chosen
explicitly, never silently counted as 2B rows for B inputs (issue 8, row 5); ``layers=[]`` is a
clear error (row 15)."""

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import CollapseProbeError, spectrum


class Siamese(nn.Module):
    """One shared block applied to two views: ``block`` runs twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.block(2.0 * x + 1.0)


def _reference(z: torch.Tensor) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(z.double().numpy(), rowvar=False))[::-1], 0, None)


@pytest.fixture
def batches():
    torch.manual_seed(1)
    data = torch.randn(256, 6) * torch.linspace(2, 0.2, 6)
    return data, [data[i : i + 32] for i in range(0, 256, 32)]


def test_twice_called_layer_is_refused_with_module_and_call_count(batches):
    _, loader = batches
    with pytest.raises(CollapseProbeError, match=r"layer 'block' ran 2 times in one forward pass.*repeated_calls"):
        spectrum(Siamese(), loader, layers="block", progress=False)


@pytest.mark.parametrize(("choice", "view"), [("first", 0), ("last", 1)])
def test_first_or_last_call_gives_that_views_spectrum_and_says_so(batches, choice, view):
    data, loader = batches
    model = Siamese()
    result = spectrum(model, loader, layers="block", progress=False, repeated_calls=choice, max_samples=200)
    with torch.no_grad():
        expected = _reference(model.block(data[:200] if view == 0 else 2.0 * data[:200] + 1.0))
    assert result.n_samples == 200  # max_samples counts inputs, not calls
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-6 * expected[0])
    assert result.extra["calls_per_forward"] == 2 and result.extra["call_used"] == choice


def test_each_call_is_its_own_spectrum(batches):
    data, loader = batches
    model = Siamese()
    result = spectrum(model, loader, layers="block", progress=False, repeated_calls="each")
    assert list(result) == ["block#0", "block#1"]
    with torch.no_grad():
        views = [model.block(data), model.block(2.0 * data + 1.0)]
    for (name, spectrum_of_call), view in zip(result.items(), views, strict=True):
        assert spectrum_of_call.n_samples == 256, name
        expected = _reference(view)
        np.testing.assert_allclose(spectrum_of_call.eigenvalues.numpy(), expected, rtol=0, atol=1e-6 * expected[0])
    assert result["block#1"].extra == {"calls_per_forward": 2, "call_used": 1}


def test_layers_called_once_carry_no_call_note(batches):
    _, loader = batches
    result = spectrum(nn.Sequential(nn.Linear(6, 4)), loader, layers=["0"], progress=False)
    assert result["0"].extra == {} and result["0"].n_samples == 256


def test_empty_layer_list_is_a_clear_error(batches):
    _, loader = batches
    with pytest.raises(CollapseProbeError, match=r"layers is empty.*layers=None"):
        spectrum(nn.Linear(6, 4), loader, layers=[], progress=False)
    with pytest.raises(CollapseProbeError, match="repeated_calls"):
        spectrum(nn.Linear(6, 4), loader, progress=False, repeated_calls="twice")
