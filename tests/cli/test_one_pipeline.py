"""One pipeline: the same model, data and options give the same numbers through spectrum(), the
CLI (spectrum, check --report-json, compare), the monitor in a plain loop, the Lightning callback
and the Hugging Face callback, for pool, normalize, max_samples and precision."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import SpectrumMonitor, spectrum
from collapse_probe.data.images import open_images
from collapse_probe.probe.options import ProbeOptions

N = 150
DATA = ["--data", "builtin:digits", "--image-size", "8", "--workers", "0", "--batch-size", "32", "--quiet",
        "--trust-checkpoint", "--layer", "2", "--max-samples", str(N)]
CASES = [
    {"pool": "avg", "normalize": False, "precision": None},
    {"pool": "max", "normalize": True, "precision": None},
    {"pool": "flatten", "normalize": False, "precision": "bf16"},
]


def _flags(case: dict) -> list[str]:
    return ["--pool", case["pool"], "--normalize" if case["normalize"] else "--no-normalize",
            "--precision", case["precision"] or "fp32"]


def _loader():
    return open_images("builtin:digits", image_size=8, batch_size=32, max_samples=N)


def _same(got_eigenvalues, got_metrics, reference) -> None:
    expected = reference.eigenvalues.numpy()
    np.testing.assert_allclose(np.asarray(got_eigenvalues, dtype=float), expected, rtol=0, atol=1e-9 * expected[0])
    for key, value in reference.metrics().items():
        if key in got_metrics and isinstance(value, float):
            other = got_metrics[key]
            assert (other is None and math.isnan(value)) or other == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['pool']}-norm{c['normalize']}-{c['precision']}")
def test_every_entry_point_gives_the_same_spectrum(case, conv_model_file, invoke, tmp_path):
    model, path = conv_model_file
    options = ProbeOptions(layers="2", max_samples=N, progress=False, **case)
    reference = spectrum(model, _loader(), options)
    assert reference.n_samples == N and reference.extra["pool"] == case["pool"]
    assert spectrum(model, _loader(), layers="2", max_samples=N, progress=False, **case).eigenvalues.equal(
        reference.eigenvalues)  # keyword arguments are the same options

    code, _, err = invoke(["spectrum", path, *DATA, *_flags(case), "--out", tmp_path / "s"])
    assert code == 0, err
    saved = json.loads((tmp_path / "s" / "spectrum.json").read_text())["layers"]["2"]
    _same(saved["eigenvalues"], saved, reference)

    code, _, err = invoke(["check", path, *DATA, *_flags(case), "--min-effective-rank", "1",
                           "--report-json", tmp_path / "r.json"])
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"][0]["value"] == pytest.approx(reference.effective_rank, rel=1e-9)
    _same(reference.eigenvalues, report["metrics"]["2"], reference)

    twin = tmp_path / "b.pt"
    twin.write_bytes(path.read_bytes())
    code, _, err = invoke(["compare", path, twin, *DATA, *_flags(case), "--out", tmp_path / "c"])
    assert code == 0, err
    compared = json.loads((tmp_path / "c" / "compare.json").read_text())
    layers = compared["layers"] if "layers" in compared else compared["spectra"]
    for entry in layers.values():
        _same(entry["eigenvalues"], entry, reference)

    row = SpectrumMonitor(_loader(), layers={"x": "2"}, max_samples=N, **case).log(model, epoch=1)
    _same(row["spectra"]["x"]["eigenvalues"], {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("x/")},
          reference)
    _same(_lightning_row(model, case)["spectra"]["x"]["eigenvalues"], {}, reference)
    _same(_hugging_face_row(model, case)["spectra"]["x"]["eigenvalues"], {}, reference)


class _Module(nn.Module):
    """A stand-in for a LightningModule: the encoder as its forward, and a ``log`` that records."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.logged = encoder, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def log(self, key: str, value: float, **_: object) -> None:
        self.logged[key] = value


def _lightning_row(model: nn.Module, case: dict) -> dict:
    lightning = pytest.importorskip("collapse_probe.integrations.lightning")
    callback = lightning.SpectrumCallback(_loader(), layers={"x": "encoder.2"}, max_samples=N, **case)
    module = _Module(model)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=0)
    callback.on_fit_start(trainer, module)
    callback.on_validation_epoch_end(trainer, module)
    assert module.logged["collapse/x/effective_rank"] == callback.last_row["x/effective_rank"]
    return callback.last_row


def _hugging_face_row(model: nn.Module, case: dict) -> dict:
    transformers_callback = pytest.importorskip("collapse_probe.integrations.transformers")
    callback = transformers_callback.SpectrumCallback(_loader(), ProbeOptions(layers={"x": "2"}, **case),
                                                      max_samples=N)
    metrics: dict = {}
    state = SimpleNamespace(global_step=0, epoch=0.0, log_history=[])
    with pytest.warns(UserWarning, match="not attached"):
        callback.on_evaluate(None, state, None, model=model, metrics=metrics)
    assert metrics["eval_collapse/x/effective_rank"] == callback.last_row["x/effective_rank"]
    return callback.last_row


def test_max_samples_on_builtin_data_is_the_same_seeded_random_subset_not_the_first_rows():
    first = torch.cat(list(open_images("builtin:digits", image_size=8, batch_size=64)))[:40]
    subset = torch.cat(list(open_images("builtin:digits", image_size=8, batch_size=64, max_samples=40)))
    again = torch.cat(list(open_images("builtin:digits", image_size=8, batch_size=64, max_samples=40)))
    assert subset.shape == first.shape and torch.equal(subset, again)
    assert not torch.equal(subset, first)


def test_unknown_and_invalid_options_are_refused_in_one_line():
    from collapse_probe.errors import CollapseProbeError

    model = nn.Linear(3, 2)
    with pytest.raises(CollapseProbeError, match="did you mean normalize"):
        spectrum(model, [torch.randn(4, 3)], nomalize=True)
    with pytest.raises(CollapseProbeError, match="unknown pool"):
        SpectrumMonitor([torch.randn(4, 3)], pool="mean")
