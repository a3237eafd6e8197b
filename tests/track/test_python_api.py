"""``track()`` from a notebook: the table (pandas) and the spectra, with or without an output folder."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from collapse_probe import Spectrum
from collapse_probe.errors import CollapseProbeError
from collapse_probe.pipeline.track import Gate, track


def test_track_returns_the_table_and_the_spectra_without_writing_anything(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    trajectory = track(run_dir, data="builtin:digits", max_samples=64, workers=0, log=lines.append)
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]  # out=None: nothing written
    table = trajectory.table
    assert isinstance(table, pd.DataFrame) and len(table) == 6
    assert {"checkpoint", "step", "layer", "role", "effective_rank", "rankme", "n_samples", "sample_limited",
            "unobserved_dims", "step_origin"} <= set(table.columns)
    assert table.groupby("layer")["step"].apply(list).to_dict() == {"backbone": [10, 20, 30],
                                                                    "projector": [10, 20, 30]}
    spectra = trajectory.spectra
    assert list(spectra) == [str(run_dir / f"epoch_000{i}.pt") for i in (1, 2, 3)]
    first = spectra[str(run_dir / "epoch_0001.pt")]["projector"]
    assert isinstance(first, Spectrum) and first.n_samples == 64
    assert table.loc[(table["step"] == 10) & (table["layer"] == "projector"), "effective_rank"].item() == first.effective_rank
    assert trajectory.steps[str(run_dir / "epoch_0003.pt")] == 30
    assert lines[0] == "3 checkpoint(s), in step order:"


def test_the_gate_from_python(run_dir):
    trajectory = track([run_dir], data="builtin:digits", max_samples=64, workers=0, log=lambda _: None,
                       gate=Gate(("effective_rank", "rankme"), max_drop=0.0))
    checks = trajectory.gate["checks"]
    assert len(checks) == 4 and all(0 <= c["drop_from_best"] or not c["failed"] for c in checks)
    with pytest.raises(CollapseProbeError, match="no such metric"):
        track([run_dir], data="builtin:digits", max_samples=64, workers=0, log=lambda _: None,
              gate=Gate(("nope",), max_drop=0.1))


def test_data_is_needed():
    with pytest.raises(CollapseProbeError, match="needs data"):
        track(["x.pt"])


def test_eigenvalues_stay_float64_on_the_cpu(run_dir):
    s = track([run_dir / "epoch_0002.pt"], data="builtin:digits", max_samples=32, workers=0,
              log=lambda _: None).spectra[str(run_dir / "epoch_0002.pt")]["backbone"]
    assert s.eigenvalues.dtype == torch.float64 and s.eigenvalues.device.type == "cpu"
