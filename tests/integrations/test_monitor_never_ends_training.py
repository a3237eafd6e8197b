"""A monitor never ends a training run (issue 17 item 6): non-finite embeddings are logged as NaN
(strict JSON: null) with a one-line warning; a model's head output or loss is never "the model
output" of an encoder; a LightningModule without forward() is probed through the named layer's
owner, or refused before the first epoch in one line naming module=."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapse_probe import SpectrumMonitor, spectrum
from collapse_probe.errors import CollapseProbeError
from collapse_probe.integrations.monitor import MonitorWarning


class _NaNAfter(nn.Module):
    """Finite embeddings, except NaN in every row of the second batch."""

    def __init__(self):
        super().__init__()
        self.linear, self.out, self.calls = nn.Linear(4, 3), nn.Identity(), 0

    def forward(self, x):
        self.calls += 1
        z = self.linear(x)
        return self.out(z * float("nan") if self.calls % 2 == 0 else z)


def test_nan_embeddings_are_logged_as_nan_and_null_and_training_goes_on(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=32)
    monitor = SpectrumMonitor(loader, layers={"z": "out"}, metrics_path=tmp_path / "m.jsonl",
                              plot_path=tmp_path / "p.png")
    with pytest.warns(MonitorWarning, match="logged as NaN") as caught:
        row = monitor.log(_NaNAfter(), epoch=1)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert math.isnan(row["z/effective_rank"]) and math.isnan(row["z/rankme"])
    assert "non-finite" in row["z/error"].lower() or "nan" in row["z/error"].lower()

    def refuse(constant):
        raise AssertionError(f"bare {constant} in a JSON line")

    saved = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0], parse_constant=refuse)
    assert saved["z/effective_rank"] is None and saved["epoch"] == 1
    # the same monitor's next, healthy probe is logged as usual
    healthy = nn.Sequential()
    healthy.add_module("out", nn.Linear(4, 3))
    assert monitor.log(healthy, epoch=2)["z/effective_rank"] > 1


def test_a_failing_probe_inside_the_reference_trainer_callback_does_not_raise():
    loader = [torch.randn(8, 4)]
    monitor = SpectrumMonitor(loader, layers={"z": "missing"})
    state = type("State", (), {"epoch": 1, "model": nn.Linear(4, 3), "row": {}})()
    with pytest.warns(MonitorWarning, match="no module named 'missing'"):
        monitor(state)
    assert math.isnan(state.row["z/effective_rank"])


L = pytest.importorskip("lightning.pytorch")


class NoForward(L.LightningModule):
    """A LightningModule with no forward(): training_step calls its parts directly."""

    def __init__(self, poison: bool = False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 1)
        self.poison = poison

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.backbone(x)).squeeze(1), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        z = self.backbone(x)
        self.log("val_loss", nn.functional.mse_loss(self.head(z).squeeze(1), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(module, callback, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(96, 6)
    data = DataLoader(TensorDataset(x, x[:, 0]), batch_size=32)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, data, data)
    return trainer


def test_lightning_module_without_forward_is_probed_through_the_layers_owner(tmp_path):
    from collapse_probe.integrations.lightning import SpectrumCallback

    probe = DataLoader(TensorDataset(torch.randn(40, 6)), batch_size=20)
    callback = SpectrumCallback(probe, layers={"rep": "backbone.2"})
    module = NoForward()
    trainer = _fit(module, callback, tmp_path)
    assert trainer.current_epoch == 2 and callback.module == "backbone"
    expected = spectrum(module.backbone, probe, layers="2", progress=False)
    np.testing.assert_allclose(callback.last_row["spectra"]["rep"]["eigenvalues"], expected.eigenvalues.numpy(),
                               rtol=0, atol=1e-9 * float(expected.eigenvalues[0]))


def test_lightning_module_without_forward_and_no_layers_is_refused_before_training(tmp_path):
    from collapse_probe.integrations.lightning import SpectrumCallback

    callback = SpectrumCallback(DataLoader(TensorDataset(torch.randn(40, 6)), batch_size=20))
    module = NoForward()
    with pytest.raises(CollapseProbeError, match="module=") as error:
        _fit(module, callback, tmp_path)
    assert "\n" not in str(error.value) and "backbone" in str(error.value)
    assert module.global_step == 0  # refused before the first step


def test_nan_embeddings_during_a_lightning_fit_do_not_end_it(tmp_path):
    from collapse_probe.integrations.lightning import SpectrumCallback

    probe = DataLoader(TensorDataset(torch.full((40, 6), float("nan"))), batch_size=20)
    callback = SpectrumCallback(probe, layers={"rep": "backbone"})
    with pytest.warns(MonitorWarning):
        trainer = _fit(NoForward(), callback, tmp_path)
    assert trainer.current_epoch == 2 and math.isnan(callback.last_row["rep/effective_rank"])


def test_hugging_face_classifier_with_labels_probes_the_base_models_hidden_states():
    transformers = pytest.importorskip("transformers")
    from collapse_probe.integrations.transformers import SpectrumCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    batches = [{"input_ids": torch.randint(5, 30, (8, 10)), "attention_mask": torch.ones(8, 10, dtype=torch.long),
                "labels": torch.randint(0, 3, (8,))} for _ in range(4)]
    batches[0]["attention_mask"][:, 7:] = 0
    callback = SpectrumCallback(batches)
    state = type("State", (), {"global_step": 0, "epoch": 0.0, "log_history": []})()
    with pytest.warns(UserWarning, match="not attached"):
        callback.on_evaluate(None, state, None, model=model, metrics={})
    assert callback.module == "bert"
    expected = spectrum(model.bert, batches, progress=False)
    got = np.asarray(callback.last_row["spectra"]["output"]["eigenvalues"])
    assert got.shape == (16,)
    np.testing.assert_allclose(got, expected.eigenvalues.numpy(), rtol=0, atol=1e-9 * float(expected.eigenvalues[0]))
    # the classifier's own output holds only a loss and logits: refused, never probed as embeddings
    with pytest.raises(CollapseProbeError, match="loss or a head's logits"):
        spectrum(model, batches, progress=False)
