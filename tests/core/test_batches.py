"""Dict batches by keyword, mapping/tuple outputs, output_fn, and attention-masked token pooling.

No transformers needed: the modules here imitate a tokenizer batch and a ModelOutput.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import CollapseProbeError, spectrum


def reference_eigenvalues(z: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(np.cov(np.asarray(z, np.float64), rowvar=False))[::-1], 0, None)


def masked_mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, np.float64)[:, :, None]
    return (np.asarray(tokens, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def token_batches(n_batches=4, batch=16, vocab=40, seed=0):
    """Tokenizer-like dict batches: each batch padded to its own longest row, plus a label."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(1, 12, (batch,), generator=g)
        width = int(lengths.max())
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1, vocab, (batch, width), generator=g) * mask
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                        "label": torch.zeros(batch)})
    return batches


class TokenEncoder(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids): no **kwargs, so `label` must not reach it."""

    def __init__(self, vocab=40, dim=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        assert attention_mask is not None and token_type_ids is not None
        h = self.block(self.embed(input_ids))
        return OrderedDict(pooler_output=h[:, 0].tanh(), last_hidden_state=h)


def tokens_of(model, batches):
    with torch.no_grad():
        return [model.block(model.embed(b["input_ids"])).numpy() for b in batches]


def test_tokenizer_batch_by_keyword_and_masked_mean_of_last_hidden_state():
    model, batches = TokenEncoder(), token_batches()
    got = spectrum(model, batches, progress=False)
    expected = np.concatenate([masked_mean(h, b["attention_mask"]) for h, b in zip(tokens_of(model, batches), batches, strict=True)])
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(expected), rtol=1e-6, atol=1e-12)
    assert got.extra["attention_mask"] is True and got.n_samples == 64
    unmasked = np.concatenate([h.mean(1) for h in tokens_of(model, batches)])
    assert not np.allclose(reference_eigenvalues(unmasked), got.eigenvalues.numpy(), rtol=1e-3)


def test_masked_max_cls_and_output_fn():
    model, batches = TokenEncoder(), token_batches()
    hs = tokens_of(model, batches)
    got = spectrum(model, batches, pool="max", progress=False)
    expected = np.concatenate([np.where(b["attention_mask"].numpy()[:, :, None] > 0, h, -np.inf).max(1)
                               for h, b in zip(hs, batches, strict=True)])
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(expected), rtol=1e-6, atol=1e-12)
    cls = spectrum(model, batches, pool="cls", progress=False)
    np.testing.assert_allclose(cls.eigenvalues.numpy(), reference_eigenvalues(np.concatenate([h[:, 0] for h in hs])),
                               rtol=1e-6, atol=1e-12)
    assert "attention_mask" not in cls.extra
    pooler = spectrum(model, batches, output_fn=lambda out: out["pooler_output"], progress=False)
    np.testing.assert_allclose(pooler.eigenvalues.numpy(),
                               reference_eigenvalues(np.concatenate([np.tanh(h[:, 0]) for h in hs])), rtol=1e-5)


def test_hooked_layer_masked_with_repeated_calls_and_max_samples():
    class Twice(TokenEncoder):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            e = self.embed(input_ids)
            return self.block(self.block(e))

    model, batches = Twice(), token_batches()
    got = spectrum(model, batches, layers="block", repeated_calls="each", max_samples=40, progress=False)
    with torch.no_grad():
        first = [model.block(model.embed(b["input_ids"])) for b in batches]
        second = [model.block(h) for h in first]
    for key, outs in (("block#0", first), ("block#1", second)):
        z = np.concatenate([masked_mean(h.numpy(), b["attention_mask"]) for h, b in zip(outs, batches, strict=True)])[:40]
        np.testing.assert_allclose(got[key].eigenvalues.numpy(), reference_eigenvalues(z), rtol=1e-6, atol=1e-12)
        assert got[key].n_samples == 40 and got[key].extra["attention_mask"] is True


def test_only_named_keys_or_all_keys_for_var_keyword_forward():
    seen = []

    class KwargsOnly(nn.Module):
        def forward(self, **batch):
            seen.append(sorted(batch))
            return batch["x"]

    z = torch.randn(20, 3)
    got = spectrum(KwargsOnly(), [{"x": z, "label": torch.zeros(20)}], progress=False)
    assert seen == [["label", "x"]]
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(z.numpy()), rtol=1e-6)
    # `label` is not a parameter of TokenEncoder.forward, which would raise a TypeError on it
    spectrum(TokenEncoder(), token_batches(n_batches=1), progress=False)


def test_input_fn_overrides_and_known_keys_still_work():
    model, batches = TokenEncoder(), token_batches()

    class Positional(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, ids):
            return self.inner(ids, torch.ones_like(ids), torch.zeros_like(ids))

    got = spectrum(Positional(), batches, input_fn=lambda b: b["input_ids"], progress=False)
    expected = spectrum(model, batches, progress=False)  # the same mask pools both: it comes from the batch
    np.testing.assert_allclose(got.eigenvalues.numpy(), expected.eigenvalues.numpy(), rtol=1e-6)
    z = torch.randn(30, 3)
    identity_like = nn.Linear(3, 3)
    out = spectrum(identity_like, [{"image": z, "label": torch.zeros(30)}], progress=False)  # forward(input)
    assert out.n_samples == 30


def test_mapping_without_last_hidden_state_takes_first_tensor_and_tuples_need_output_fn():
    class DictOut(nn.Module):
        def forward(self, x):
            return {"note": "not a tensor", "embedding": x * 2, "other": x}

    z = torch.randn(40, 4)
    got = spectrum(DictOut(), [z], progress=False)
    np.testing.assert_allclose(got.eigenvalues.numpy(), reference_eigenvalues(2 * z.numpy()), rtol=1e-6)
    lstm = nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(16, 2, 3)
    with pytest.raises(CollapseProbeError, match="output_fn"):
        spectrum(lstm, [x], progress=False)
    picked = spectrum(lstm, [x], output_fn=lambda out: out[0], progress=False)
    assert picked.dim == 4 and picked.n_samples == 16


def test_mask_that_does_not_fit_the_tokens_is_an_error():
    class AddsToken(nn.Module):
        def forward(self, input_ids, attention_mask):
            h = torch.randn(*input_ids.shape, 3)
            return torch.cat([h[:, :1], h], dim=1)

    with pytest.raises(CollapseProbeError, match="attention_mask is"):
        spectrum(AddsToken(), token_batches(n_batches=1), progress=False)
    ok = spectrum(AddsToken(), token_batches(n_batches=1), output_fn=lambda h: h[:, 0], progress=False)
    assert ok.dim == 3
