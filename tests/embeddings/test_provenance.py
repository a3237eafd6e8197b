"""The result says what it was made from: shards in order, rows, fingerprints, dtype, unit norms, ids."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from collapse_probe.embeddings import embeddings_spectrum
from collapse_probe.embeddings.provenance import FINGERPRINT_BYTES


def _expected_fingerprint(path, name=""):
    """:data:`FINGERPRINT` written out independently: size, first and last 64 KiB, the name."""
    data = path.read_bytes()
    head = data[:FINGERPRINT_BYTES]
    tail = data[len(head):][-FINGERPRINT_BYTES:] if len(data) > len(head) else b""
    return "sha256:" + hashlib.sha256(f"{len(data)}\n".encode() + head + tail + name.encode()).hexdigest()


def test_shards_rows_fingerprints_and_dtype_are_recorded(tmp_path, emb):
    z = emb.sample(30000, dim=4)  # 480 kB: head and tail are distinct parts of the file
    np.save(tmp_path / "e_10.npy", z[:20000])
    np.save(tmp_path / "e_9.npy", z[20000:].astype(np.float16))
    s = embeddings_spectrum(tmp_path, progress=False)
    record = s.extra["embeddings"]
    assert [r["path"] for r in record["shards"]] == [str(tmp_path / "e_9.npy"), str(tmp_path / "e_10.npy")]
    assert [r["rows"] for r in record["shards"]] == [10000, 20000]
    assert [r["read"] for r in record["shards"]] == [[[0, 10000]], [[0, 20000]]]
    assert [r["dtype"] for r in record["shards"]] == ["float16", "float32"]
    assert record["dtype"] == "mixed: float16, float32" and s.input_dtype == "float16"
    assert [r["fingerprint"] for r in record["shards"]] == [_expected_fingerprint(tmp_path / n)
                                                          for n in ("e_9.npy", "e_10.npy")]
    assert record["rows"] == record["total_rows"] == 30000 and record["dim"] == 4
    assert "sha256" in record["fingerprint_method"] and "64 KiB" in record["fingerprint_method"]


def test_a_changed_file_changes_its_fingerprint(tmp_path, emb):
    z = emb.sample(100, dim=3)
    np.save(tmp_path / "z.npy", z)
    before = embeddings_spectrum(tmp_path / "z.npy", progress=False).extra["embeddings"]["shards"][0]["fingerprint"]
    z[-1, -1] += 1.0
    np.save(tmp_path / "z.npy", z)
    after = embeddings_spectrum(tmp_path / "z.npy", progress=False).extra["embeddings"]["shards"][0]["fingerprint"]
    assert before != after


def test_unit_norm_rows_are_detected_and_said(tmp_path, emb, invoke):
    z = emb.sample(500, dim=16).astype(np.float64)
    unit = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float16)
    np.save(tmp_path / "unit.npy", unit)
    np.save(tmp_path / "raw.npy", z)
    code, _, stderr = invoke(["embeddings", tmp_path / "unit.npy", "--out", tmp_path / "o"])
    assert code == 0 and "the spectrum is that of unit vectors" in stderr
    record = json.loads((tmp_path / "o" / "spectrum.json").read_text())["layers"]["unit"]["extra"]["embeddings"]
    assert record["norms"]["unit_norm"] and record["norms"]["rows_off_unit"] == 0
    assert abs(record["norms"]["min_norm"] - 1) < 1e-3 and abs(record["norms"]["max_norm"] - 1) < 1e-3
    raw = embeddings_spectrum(tmp_path / "raw.npy", progress=False).extra["embeddings"]["norms"]
    assert not raw["unit_norm"] and raw["rows_off_unit"] == 500


def test_ids_are_hashed_in_row_order_and_written_one_per_line(tmp_path, emb):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    z = emb.sample(300, dim=5)
    ids = [f"img/{i}.jpg" for i in range(300)]
    column = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), 5)
    pq.write_table(pa.table({"key": ids, "embedding": column}), tmp_path / "z.parquet", row_group_size=64)
    s = embeddings_spectrum(tmp_path / "z.parquet", id_column="key", ids_file=tmp_path / "ids.jsonl",
                            progress=False, memory_budget="64kB")
    text = "".join(json.dumps(i) + "\n" for i in ids)
    assert (tmp_path / "ids.jsonl").read_text() == text
    assert s.extra["embeddings"]["ids"] == {"column": "key", "count": 300, "file": "ids.jsonl",
                                            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def test_the_cli_prints_the_order_and_reports_the_shape(tmp_path, emb, invoke):
    for i in (2, 1, 10):
        np.save(tmp_path / f"s_{i}.npy", emb.sample(20, dim=3, seed=i))
    code, stdout, stderr = invoke(["embeddings", tmp_path, "--json", "--out", tmp_path / "o"])
    assert code == 0
    order = next(line for line in stderr.splitlines() if line.startswith("reading 3 shard(s) in this order"))
    assert order.index("s_1.npy") < order.index("s_2.npy") < order.index("s_10.npy")
    document = json.loads(stdout)
    assert document["source"]["shape"] == [60, 3] and document["source"]["n_shards"] == 3
