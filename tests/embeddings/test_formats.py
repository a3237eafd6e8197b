"""Every format, read in small chunks, equals numpy float64 on the concatenated rows (1e-9 of the largest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from collapse_probe.embeddings import embeddings_spectrum, resolve

#: A budget of a few kB of rows: every file is read in many chunks, chunks cross shard ends.
TINY = "64kB"


def _spectrum(source, **options):
    return embeddings_spectrum(source, progress=False, memory_budget=options.pop("memory_budget", TINY), **options)


@pytest.mark.parametrize("layout", ["C", "fortran", "big-endian"])
def test_npy_in_every_layout(tmp_path, emb, layout):
    z = emb.sample(3000)
    stored = {"C": z, "fortran": np.asfortranarray(z), "big-endian": z.astype(">f4")}[layout]
    np.save(tmp_path / "z.npy", stored)
    s = _spectrum(tmp_path / "z.npy")
    emb.assert_matches(s, z)
    assert s.input_dtype == "float32" and s.extra["embeddings"]["dtype"] == "float32"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_dtypes_cast_exactly(tmp_path, emb, dtype):
    z = emb.sample(2000, dtype=dtype)
    np.save(tmp_path / "z.npy", z)
    s = _spectrum(tmp_path / "z.npy")
    emb.assert_matches(s, z.astype(np.float64))  # the stored values, cast exactly: float16 included
    assert s.input_dtype == np.dtype(dtype).name


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_member(tmp_path, emb, compressed):
    z = emb.sample(2500)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "z.npz", embeddings=z, labels=np.arange(5))
    emb.assert_matches(_spectrum(tmp_path / "z.npz"), z)
    emb.assert_matches(_spectrum(tmp_path / "z.npz", key="embeddings"), z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pt_dict_of_tensors(tmp_path, emb, dtype):
    z = torch.from_numpy(emb.sample(2000)).to(dtype)
    torch.save({"embeddings": z, "meta": {"step": 3}, "other": torch.zeros(4)}, tmp_path / "z.pt")
    s = _spectrum(tmp_path / "z.pt")
    emb.assert_matches(s, z.double().numpy())
    assert s.input_dtype == str(dtype).removeprefix("torch.")


def test_pt_single_column_major_and_nested_tensors(tmp_path, emb):
    z = emb.sample(1500)
    torch.save(torch.from_numpy(np.ascontiguousarray(z.T)).T, tmp_path / "t.pt")  # column-major strides
    emb.assert_matches(_spectrum(tmp_path / "t.pt"), z)
    torch.save({"heads": {"proj": torch.from_numpy(z[100:])}, "x": torch.zeros(2, 2)}, tmp_path / "n.pt")
    emb.assert_matches(_spectrum(tmp_path / "n.pt", key="heads.proj"), z[100:])
    base = torch.from_numpy(emb.sample(1600))
    torch.save({"embeddings": base[100:]}, tmp_path / "view.pt")  # a view: storage offset 100 rows
    emb.assert_matches(_spectrum(tmp_path / "view.pt"), base[100:].numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_safetensors(tmp_path, emb, dtype):
    z = torch.from_numpy(emb.sample(1800)).to(dtype)
    save_file({"z": z, "ids": torch.arange(3)}, str(tmp_path / "z.safetensors"))
    emb.assert_matches(_spectrum(tmp_path / "z.safetensors", key="z"), z.double().numpy())


def _parquet(path, z, kind, row_group_size=700):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ids = [f"item-{i}" for i in range(len(z))]
    if kind == "fixed":
        column = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), z.shape[1])
        table = pa.table({"id": ids, "embedding": column})
    elif kind == "list":
        table = pa.table({"id": ids, "embedding": pa.array(list(z))})
    else:
        table = pa.table({"id": ids, **{f"dim_{j}": z[:, j] for j in range(z.shape[1])}})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.mark.parametrize("kind", ["fixed", "list", "columns"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_parquet_embedding_column(tmp_path, emb, kind, dtype):
    z = emb.sample(2100, dtype=dtype)
    _parquet(tmp_path / "z.parquet", z, kind)
    column = "dim_*" if kind == "columns" else None
    s = _spectrum(tmp_path / "z.parquet", column=column)
    emb.assert_matches(s, z.astype(np.float64))
    assert s.extra["embeddings"]["dtype"] == np.dtype(dtype).name


def test_parquet_split_across_parts_starts_inside_row_groups(tmp_path, emb):
    z = emb.sample(2100)
    _parquet(tmp_path / "z.parquet", z, "fixed", row_group_size=333)
    for part in range(3):
        lo, hi = 2100 * part // 3, 2100 * (part + 1) // 3
        emb.assert_matches(_spectrum(tmp_path / "z.parquet", part=f"{part}/3"), z[lo:hi])


def _clip_dump(root, z, shard_rows, *, unit=True):
    """clip-retrieval's layout: img_emb/img_emb_{i}.npy (float16, L2-normalised) + metadata_{i}.parquet."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    if unit:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    z = z.astype(np.float16)
    start = 0
    for i, rows in enumerate(shard_rows):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", z[start : start + rows])
        paths = [f"{i}/{k}.jpg" for k in range(rows)]
        pq.write_table(pa.table({"image_path": paths, "caption": ["c"] * rows}), root / "metadata" / f"metadata_{i}.parquet")
        start += rows
    return z


def test_clip_retrieval_layout_in_natural_order(tmp_path, emb):
    # 11 shards: img_emb_10 must come after img_emb_9, not after img_emb_1
    z = _clip_dump(tmp_path / "dump", emb.sample(1100, dim=8, dtype=np.float64), [100] * 11)
    s = _spectrum(tmp_path / "dump", id_column="image_path")
    emb.assert_matches(s, z.astype(np.float64))
    record = s.extra["embeddings"]
    assert record["layout"] == "clip-retrieval"
    assert [r["path"].rsplit("/", 1)[1] for r in record["shards"]] == [f"img_emb_{i}.npy" for i in range(11)]
    assert record["norms"]["unit_norm"] and "the spectrum is that of unit vectors" in record["norms"]["note"]
    assert record["ids"]["count"] == 1100
    emb.assert_matches(_spectrum(tmp_path / "dump" / "img_emb"), z.astype(np.float64))  # the folder itself


def test_folder_glob_and_list_read_the_same_rows(tmp_path, emb):
    z = emb.sample(1200)
    bounds = [0, 7, 300, 301, 1200]  # uneven, one of a single row
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        np.save(tmp_path / f"part_{i}.npy", z[lo:hi])
    for source in (tmp_path, str(tmp_path / "part_*.npy"), [tmp_path / f"part_{i}.npy" for i in range(4)]):
        emb.assert_matches(_spectrum(source), z)
    listed = resolve([tmp_path / "part_3.npy", tmp_path / "part_0.npy"])  # a list keeps the order given
    assert [s.path.name for s in listed.shards] == ["part_3.npy", "part_0.npy"]


def test_uncentred_normalized_and_grouped(tmp_path, emb):
    z = emb.sample(2000)
    np.save(tmp_path / "z.npy", z)
    emb.assert_matches(_spectrum(tmp_path / "z.npy", center=False), z, center=False)
    unit = z.astype(np.float64) / np.linalg.norm(z.astype(np.float64), axis=1, keepdims=True)
    emb.assert_matches(_spectrum(tmp_path / "z.npy", normalize=True), unit)
    grouped = _spectrum(tmp_path / "z.npy", groups=4, memory_budget="1MB")
    emb.assert_matches(grouped, z)
    assert grouped.stderr["effective_rank"] > 0


def test_quantised_integer_codes(tmp_path, emb):
    codes = np.random.default_rng(1).integers(-128, 127, size=(1500, 10)).astype(np.int8)
    np.save(tmp_path / "q.npy", codes)
    s = _spectrum(tmp_path / "q.npy", quantised=True)
    emb.assert_matches(s, codes.astype(np.float64))
    assert s.extra["embeddings"]["dtype"] == "int8" and "codes" in s.extra["embeddings"]["quantised_note"]
