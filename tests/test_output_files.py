"""`spectrum` / `embeddings` / `compare` output files are written atomically (issue 17 item 12): a
crash while one is written leaves the previous file whole and no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from collapse_probe.pipeline.outputs import (
    ProbeResult,
    load_spectra,
    write_comparison,
    write_outputs,
)
from collapse_probe.results.spectrum import Spectrum


def _result(seed: int) -> ProbeResult:
    z = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return ProbeResult({"fc": Spectrum.from_embeddings(z)}, {"fc": "representation"})


def _half_then_crash(monkeypatch, cls, name: str) -> None:
    """``cls.name`` writes a few bytes to its file, then the process 'dies' (KeyboardInterrupt).

    The file is ``self`` for ``Path.write_text`` / ``write_bytes``, the first argument for
    ``Figure.savefig`` / ``DataFrame.to_csv``.
    """
    def crash(self, *args, **kwargs):
        with open(self if isinstance(self, Path) else args[0], "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(cls, name, crash)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("writer", ["png", "csv", "json"])
def test_a_crash_mid_write_leaves_the_previous_outputs_whole(tmp_path, monkeypatch, writer):
    write_outputs(_result(0), tmp_path)
    before = _files(tmp_path)
    assert set(before) == {"spectrum.json", "spectrum.csv", "spectrum.png"} and before["spectrum.png"][:4] == b"\x89PNG"
    if writer == "png":
        _half_then_crash(monkeypatch, Figure, "savefig")
    elif writer == "csv":
        _half_then_crash(monkeypatch, pd.DataFrame, "to_csv")
    else:  # the JSON text is written by Path.write_text (in place) or write_bytes (to the temporary file)
        _half_then_crash(monkeypatch, Path, "write_text")
        _half_then_crash(monkeypatch, Path, "write_bytes")
    with pytest.raises(KeyboardInterrupt):
        write_outputs(_result(1), tmp_path)
    after = _files(tmp_path)
    assert set(after) == set(before)  # no temporary file left
    assert after[f"spectrum.{writer}"] == before[f"spectrum.{writer}"]


def test_outputs_replace_the_previous_ones_completely(tmp_path):
    write_outputs(_result(0), tmp_path)
    write_outputs(_result(1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spectrum.csv", "spectrum.json", "spectrum.png"]
    expected = _result(1).spectra["fc"].eigenvalues
    assert torch.equal(load_spectra(tmp_path / "spectrum.json").spectra["fc"].eigenvalues, expected)
    assert (tmp_path / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    paths = write_comparison({"a": _result(0).spectra["fc"], "b": _result(1).spectra["fc"]}, tmp_path / "cmp")
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.csv", "compare.json", "compare.png"]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_a_crash_mid_compare_leaves_the_previous_plot(tmp_path, monkeypatch):
    spectra = {"a": _result(0).spectra["fc"]}
    write_comparison(spectra, tmp_path)
    before = _files(tmp_path)
    _half_then_crash(monkeypatch, Figure, "savefig")
    with pytest.raises(KeyboardInterrupt):
        write_comparison(spectra, tmp_path)
    assert _files(tmp_path) == before



def test_spectrum_save_is_atomic_too(tmp_path, monkeypatch):
    path = _result(0).spectra["fc"].save(tmp_path / "fc.json")
    before = _files(tmp_path)
    _half_then_crash(monkeypatch, Path, "write_text")
    _half_then_crash(monkeypatch, Path, "write_bytes")
    with pytest.raises(KeyboardInterrupt):
        _result(1).spectra["fc"].save(path)
    assert _files(tmp_path) == before  # was: a stale fc.json.tmp beside it
