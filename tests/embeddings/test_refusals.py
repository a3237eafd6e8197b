"""Bad input is refused before any statistics: exit 2, one line, nothing written."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from collapse_probe.embeddings import embeddings_spectrum
from collapse_probe.embeddings import stream as stream_module
from collapse_probe.errors import CollapseProbeError


def _refused(invoke, emb, args, out):
    code, stdout, stderr = invoke([*args, "--out", out])
    assert code == 2 and stdout == ""
    assert not out.exists(), "a refused run left its --out folder behind"
    return emb.error_line(stderr)


def test_a_shard_of_another_width_is_refused_naming_both_before_any_row_is_read(tmp_path, invoke, emb, monkeypatch):
    np.save(tmp_path / "e_0.npy", emb.sample(50, dim=8))
    np.save(tmp_path / "e_1.npy", emb.sample(50, dim=8))
    np.save(tmp_path / "e_2.npy", emb.sample(50, dim=6))
    read = []
    monkeypatch.setattr(stream_module, "stream_rows", lambda *a, **k: read.append(a))
    line = _refused(invoke, emb, ["embeddings", tmp_path], tmp_path / "out" / "deeper")
    assert "e_2.npy is 6 wide" in line and "e_0.npy (the first shard) 8" in line
    assert read == []


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint8, np.bool_])
def test_integer_arrays_are_refused_unless_quantised(tmp_path, invoke, emb, dtype):
    np.save(tmp_path / "ids.npy", np.ones((40, 3), dtype=dtype))
    line = _refused(invoke, emb, ["embeddings", tmp_path / "ids.npy"], tmp_path / "out")
    assert "usually ids or labels" in line and "--quantised" in line
    code, _, stderr = invoke(["embeddings", tmp_path / "ids.npy", "--quantised", "--quiet", "--out", tmp_path / "ok"])
    assert code == 0, stderr


def test_missing_pyarrow_is_named_in_one_line(tmp_path, invoke, emb, monkeypatch):
    (tmp_path / "z.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    line = _refused(invoke, emb, ["embeddings", tmp_path / "z.parquet"], tmp_path / "out")
    assert "pip install 'collapse-probe[parquet]'" in line


def test_ragged_and_null_parquet_rows_are_refused_naming_the_row(tmp_path, emb):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [[1.0, 2.0, 3.0]] * 5 + [[1.0, 2.0]] + [[0.5, 0.5, 0.5]] * 4
    pq.write_table(pa.table({"embedding": pa.array(rows)}), tmp_path / "ragged.parquet")
    with pytest.raises(CollapseProbeError, match="row 5 has 2 values, the first row 3"):
        embeddings_spectrum(tmp_path / "ragged.parquet", progress=False)
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], None, [3.0, 1.0]])}), tmp_path / "null.parquet")
    with pytest.raises(CollapseProbeError, match="row 1 is null"):
        embeddings_spectrum(tmp_path / "null.parquet", progress=False)


def test_a_parquet_file_without_an_obvious_column_asks_for_one(tmp_path, emb):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"a": pa.array([[1.0, 2.0]] * 3), "b": pa.array([[1.0, 2.0]] * 3), "name": ["x"] * 3})
    pq.write_table(table, tmp_path / "two.parquet")
    with pytest.raises(CollapseProbeError, match="--column NAME"):
        embeddings_spectrum(tmp_path / "two.parquet", progress=False)
    assert embeddings_spectrum(tmp_path / "two.parquet", column="b", progress=False).n_samples == 3


@pytest.mark.parametrize(("make", "args", "expected"), [
    (lambda p: None, ["missing.npy"], "embeddings file not found"),
    (lambda p: (p / "z.txt").write_text("1 2"), ["z.txt"], "unsupported embeddings file"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["z.npy", "./z.npy"], "is given twice"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["z.npy", "--part", "2/2"], "I must be in 0 .. K - 1"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["z.npy", "--memory-budget", "lots"], "--memory-budget lots"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["z.npy", "--memory-budget", "10"], "cannot hold a few rows"),
    (lambda p: np.save(p / "z.npy", np.zeros((0, 2))), ["z.npy"], "no rows to read"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2, 2))), ["z.npy"], "expected an (N, d) array"),
    (lambda p: torch.save({"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, p / "z.pt"), ["z.pt"], "with --key"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["z.npy", "--id-column", "id"], "has no id column"),
    (lambda p: np.save(p / "z.npy", np.zeros((5, 2))), ["*.nothing"], "no embedding files match"),
])
def test_one_line_refusals(tmp_path, invoke, emb, monkeypatch, make, args, expected):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    if "--memory-budget" in args and args[-1] == "10":
        args = [*args[:-1], "10B"]
    line = _refused(invoke, emb, ["embeddings", *args], tmp_path / "out")
    assert expected in line, line


def test_a_truncated_npy_is_refused_not_read_short(tmp_path, emb):
    np.save(tmp_path / "z.npy", emb.sample(100))
    data = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "z.npy").write_bytes(data[:-10])
    with pytest.raises(CollapseProbeError, match="ends early"):
        embeddings_spectrum(tmp_path / "z.npy", progress=False)


def test_save_state_with_groups_is_refused(tmp_path, invoke, emb):
    np.save(tmp_path / "z.npy", emb.sample(100))
    code, _, stderr = invoke(["embeddings", tmp_path / "z.npy", "--groups", "3", "--save-state", tmp_path / "s.pt"])
    assert code == 2 and "merge --jackknife" in emb.error_line(stderr)
    assert not (tmp_path / "s.pt").exists()
