"""compare refuses embedding sets of different row counts, or (both with --id-column) different ids."""

from __future__ import annotations

import numpy as np
import pytest


def _parquet(path, z, ids):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), z.shape[1])
    pq.write_table(pa.table({"id": ids, "embedding": column}), path)


def _embed(invoke, source, out, *extra):
    code, _, stderr = invoke(["embeddings", source, "--quiet", "--out", out, *extra])
    assert code == 0, stderr
    return out / "spectrum.json"


def test_sets_of_different_row_counts_are_refused(tmp_path, invoke, emb):
    np.save(tmp_path / "a.npy", emb.sample(300, dim=4, seed=1))
    np.save(tmp_path / "b.npy", emb.sample(299, dim=4, seed=2))
    a, b = _embed(invoke, tmp_path / "a.npy", tmp_path / "A"), _embed(invoke, tmp_path / "b.npy", tmp_path / "B")
    code, stdout, stderr = invoke(["compare", a, b, "--out", tmp_path / "cmp"])
    assert code == 2 and stdout == ""
    line = emb.error_line(stderr)
    assert "holds 299 rows" in line and "300" in line and "same items" in line


def test_sets_with_different_ids_are_refused_naming_the_first_mismatch(tmp_path, invoke, emb):
    ids = [f"img_{i}" for i in range(200)]
    swapped = list(ids)
    swapped[57], swapped[58] = swapped[58], swapped[57]
    _parquet(tmp_path / "a.parquet", emb.sample(200, dim=4, seed=1), ids)
    _parquet(tmp_path / "b.parquet", emb.sample(200, dim=4, seed=2), swapped)
    _parquet(tmp_path / "c.parquet", emb.sample(200, dim=4, seed=3), ids)
    a = _embed(invoke, tmp_path / "a.parquet", tmp_path / "A", "--id-column", "id")
    b = _embed(invoke, tmp_path / "b.parquet", tmp_path / "B", "--id-column", "id")
    c = _embed(invoke, tmp_path / "c.parquet", tmp_path / "C", "--id-column", "id")
    code, _, stderr = invoke(["compare", a, b, "--out", tmp_path / "cmp"])
    assert code == 2
    line = emb.error_line(stderr)
    assert 'first at row 57, "img_58" in' in line and '"img_57" in' in line
    code, _, stderr = invoke(["compare", a, c, "--quiet", "--out", tmp_path / "cmp"])
    assert code == 0, stderr
    (tmp_path / "B" / "ids.jsonl").unlink()  # without the ids file the hashes still tell them apart
    code, _, stderr = invoke(["compare", a, b, "--out", tmp_path / "cmp"])
    assert code == 2 and "hold different ids" in emb.error_line(stderr)
