"""spectrum(model, loader): layers, batch formats, pooling, modes, hooks and bad input."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe import CollapseProbeError, NonFiniteEmbeddingError, spectrum


def reference_eigenvalues(z: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(np.asarray(z, np.float64), rowvar=False))[::-1], 0, None)


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))


@pytest.fixture
def images():
    return torch.randn(96, 3, 6, 6)


def test_layers_match_reference_features_and_order(images):
    model = TinyConvNet()
    with torch.no_grad():
        model.eval()
        features = model.features(images)
        pooled = features.mean(dim=(2, 3))
        logits = model.head(pooled)
    model.train()
    loader = DataLoader(TensorDataset(images, torch.zeros(96)), batch_size=10)
    result = spectrum(model, loader, layers=["head", "features"], progress=False)
    assert list(result) == ["head", "features"]
    np.testing.assert_allclose(result["features"].eigenvalues.numpy(), reference_eigenvalues(pooled.numpy()), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(result["head"].eigenvalues.numpy(), reference_eigenvalues(logits.numpy()), rtol=1e-5, atol=1e-12)
    output = spectrum(model, loader, progress=False)
    assert output.layer is None and torch.allclose(output.eigenvalues, result["head"].eigenvalues)
    single = spectrum(model, loader, layers="features", progress=False)
    assert single.layer == "features" and single.dim == 8
    assert model.training and model.dropout.training  # mode restored


def test_pooling_variants(images):
    model = TinyConvNet()
    loader = DataLoader(TensorDataset(images), batch_size=32)
    assert spectrum(model, loader, layers="features", pool="flatten", progress=False).dim == 8 * 36
    with torch.no_grad():
        maxed = model.eval().features(images).amax(dim=(2, 3))
    got = spectrum(model, loader, layers="features", pool="max", progress=False)
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(maxed.numpy()), rtol=1e-5, atol=1e-12)


def test_token_outputs_average_or_take_cls():
    tokens = torch.randn(64, 5, 4)
    identity = nn.Identity()
    mean = spectrum(identity, [tokens[:32], tokens[32:]], progress=False)
    cls = spectrum(identity, [tokens[:32], tokens[32:]], pool="cls", progress=False)
    np.testing.assert_allclose(mean.eigenvalues.numpy(), reference_eigenvalues(tokens.mean(1).numpy()), rtol=1e-6)
    np.testing.assert_allclose(cls.eigenvalues.numpy(), reference_eigenvalues(tokens[:, 0].numpy()), rtol=1e-6)


def test_batch_formats_and_input_fn():
    z = torch.randn(60, 3)
    identity = nn.Identity()
    expected = reference_eigenvalues(z.numpy())
    for batches in ([z[:30], z[30:]], [(z[:30], 0), (z[30:], 1)], [{"image": z[:30]}, {"image": z[30:]}]):
        np.testing.assert_allclose(spectrum(identity, batches, progress=False).eigenvalues.numpy(), expected, rtol=1e-6)
    custom = [{"pixels": z[:30]}, {"pixels": z[30:]}]
    with pytest.raises(CollapseProbeError, match="input_fn"):
        spectrum(identity, custom, progress=False)
    got = spectrum(identity, custom, input_fn=lambda b: b["pixels"], progress=False)
    np.testing.assert_allclose(got.eigenvalues.numpy(), expected, rtol=1e-6)


def test_max_samples_truncates_exactly():
    z = torch.randn(100, 4)
    got = spectrum(nn.Identity(), [z[i : i + 30] for i in range(0, 100, 30)], max_samples=45, progress=False)
    assert got.n_samples == 45
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(z[:45].numpy()), rtol=1e-6)


def test_normalize_and_bf16_autocast_conventions():
    z = torch.randn(200, 6) + 2
    normed = spectrum(nn.Identity(), [z], normalize=True, progress=False)
    unit = z / z.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(normed.eigenvalues.numpy(), reference_eigenvalues(unit.numpy()), rtol=1e-5)
    linear = nn.Linear(6, 6)
    low = spectrum(linear, [z], precision="bf16", progress=False)
    assert low.input_dtype == "bfloat16" and low.default_rtol() > torch.finfo(torch.float32).eps  # the bf16 rounding floor
    with torch.no_grad():
        full = linear(z)
    np.testing.assert_allclose(low.eigenvalues.numpy(), reference_eigenvalues(full.numpy()), rtol=0.05)


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x):
        self.inner(x)
        raise RuntimeError("boom")


def test_hooks_removed_and_mode_restored_when_model_raises():
    model = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        spectrum(model, [torch.randn(4, 3)], layers="inner", progress=False)
    assert model.training and model.inner.training
    assert not model.inner._forward_hooks


def test_bad_input_errors():
    model = TinyConvNet()
    with pytest.raises(CollapseProbeError, match="did you mean head"):
        spectrum(model, [torch.randn(4, 3, 6, 6)], layers="haed", progress=False)
    with pytest.raises(CollapseProbeError, match="no batches"):
        spectrum(model, [], progress=False)
    with pytest.raises(CollapseProbeError, match="integer tensor"):
        spectrum(model, [torch.zeros(4, 3, 6, 6, dtype=torch.uint8)], progress=False)
    with pytest.raises(CollapseProbeError, match="returns a tuple"):
        spectrum(nn.LSTM(3, 4, batch_first=True), [torch.randn(4, 2, 3)], progress=False)
    with pytest.raises(CollapseProbeError, match="duplicates"):
        spectrum(model, [torch.randn(4, 3, 6, 6)], layers=["head", "head"], progress=False)


def test_nonfinite_error_names_layer_and_batch():
    batches = [torch.randn(8, 3), torch.randn(8, 3), torch.full((8, 3), float("nan"))]
    with pytest.raises(NonFiniteEmbeddingError, match=r"layer '0', first in batch 2"):
        spectrum(nn.Sequential(nn.Identity()), batches, layers=["0"], progress=False)
    kept = spectrum(nn.Identity(), batches, skip_nonfinite=True, progress=False)
    assert kept.n_samples == 16 and kept.n_skipped_nonfinite == 8
