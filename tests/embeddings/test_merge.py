"""Parts saved from any split, merged in any order, equal one pass; overlaps and mixed options are refused."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from collapse_probe.embeddings import embeddings_spectrum, make_options, merge_states, read_part


@pytest.fixture
def shards(tmp_path, emb):
    z = emb.sample(2400, dim=10)
    bounds = [0, 500, 510, 1700, 2400]
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        np.save(folder / f"e_{i}.npy", z[lo:hi])
    return folder, z


def _save_parts(folder, k, out, **options):
    paths = []
    for i in range(k):
        state = read_part(folder, make_options(part=(i, k), progress=False, memory_budget="64kB", **options))
        paths.append(state.save(out / f"part_{i}.pt"))
    return paths


@pytest.mark.parametrize("k", [2, 3, 5])
def test_parts_merged_in_any_order_equal_one_pass(shards, tmp_path, emb, k):
    folder, z = shards
    paths = _save_parts(folder, k, tmp_path)
    whole = embeddings_spectrum(folder, progress=False)
    merged = [merge_states(list(order)) for order in itertools.permutations(paths)]
    emb.assert_matches(merged[0], z)
    top = float(whole.eigenvalues[0])
    for spectrum in merged:
        np.testing.assert_allclose(spectrum.eigenvalues.numpy(), whole.eigenvalues.numpy(), rtol=0, atol=1e-12 * top)
        np.testing.assert_array_equal(spectrum.eigenvalues.numpy(), merged[0].eigenvalues.numpy())
    record = merged[0].extra["embeddings"]
    assert record["rows"] == 2400 and [r["read"] for r in record["shards"]] == [[[0, r["rows"]]] for r in record["shards"]]


def test_parts_of_a_hand_made_split_by_files_merge_too(shards, tmp_path, emb):
    folder, z = shards
    first = read_part([folder / "e_0.npy", folder / "e_3.npy"], make_options(progress=False)).save(tmp_path / "a.pt")
    second = read_part([folder / "e_2.npy", folder / "e_1.npy"], make_options(progress=False)).save(tmp_path / "b.pt")
    emb.assert_matches(merge_states([second, first]), z)


def test_the_jackknife_over_parts_is_the_textbook_one(shards, tmp_path):
    folder, z = shards
    paths = _save_parts(folder, 4, tmp_path)
    merged = merge_states(paths, jackknife=True)
    # independent: numpy eigenvalues of the rows without each part, effective rank, jackknife formula
    def effective_rank(rows):
        eig = np.clip(np.linalg.eigvalsh(np.cov(rows.astype(np.float64), rowvar=False)), 0, None)
        p = np.sqrt(eig) / np.sqrt(eig).sum()
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))
    cuts = [2400 * i // 4 for i in range(5)]
    loo = np.array([effective_rank(np.concatenate([z[: cuts[i]], z[cuts[i + 1]:]])) for i in range(4)])
    expected = np.sqrt(3 / 4 * ((loo - loo.mean()) ** 2).sum())
    assert merged.stderr["effective_rank"] == pytest.approx(expected, rel=1e-6)
    assert merged.extra["jackknife"]["groups"] == 4


def _merge_refused(invoke, emb, paths, out):
    code, stdout, stderr = invoke(["merge", *paths, "--out", out])
    assert code == 2 and stdout == "" and not out.exists()
    return emb.error_line(stderr)


def test_overlapping_parts_are_refused(shards, tmp_path, invoke, emb):
    folder, _ = shards
    a, b = _save_parts(folder, 2, tmp_path)
    whole = read_part(folder, make_options(progress=False)).save(tmp_path / "whole.pt")
    line = _merge_refused(invoke, emb, [a, whole], tmp_path / "m")
    assert "both hold rows 0-499 of" in line and "must not overlap" in line
    (tmp_path / "copy.pt").write_bytes(b.read_bytes())  # the same part under another name
    assert "must not overlap" in _merge_refused(invoke, emb, [b, tmp_path / "copy.pt"], tmp_path / "m")
    code, _, stderr = invoke(["merge", b, a, "--quiet", "--out", tmp_path / "m"])
    assert code == 0 and (tmp_path / "m" / "spectrum.json").is_file()


@pytest.mark.parametrize(("option", "value", "named"), [
    ("center", False, "center"), ("normalize", True, "normalize"), ("skip_nonfinite", True, "skip_nonfinite")])
def test_parts_made_with_other_options_are_refused(shards, tmp_path, invoke, emb, option, value, named):
    folder, _ = shards
    a, _ = _save_parts(folder, 2, tmp_path)
    other = read_part(folder, make_options(part=(1, 2), progress=False, **{option: value})).save(tmp_path / "o.pt")
    assert f"{named}=" in _merge_refused(invoke, emb, [a, other], tmp_path / "m")


def test_parts_of_another_dtype_or_width_are_refused(tmp_path, invoke, emb):
    z = emb.sample(200, dim=6)
    np.save(tmp_path / "a.npy", z[:100])
    np.save(tmp_path / "b.npy", z[100:].astype(np.float16))
    np.save(tmp_path / "c.npy", emb.sample(100, dim=5))
    parts = {n: read_part(tmp_path / f"{n}.npy", make_options(progress=False)).save(tmp_path / f"{n}.pt")
             for n in "abc"}
    assert "read float16 rows" in _merge_refused(invoke, emb, [parts["a"], parts["b"]], tmp_path / "m")
    assert "5 wide" in _merge_refused(invoke, emb, [parts["a"], parts["c"]], tmp_path / "m")
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    assert "not a collapse-probe state" in _merge_refused(invoke, emb, [parts["a"], tmp_path / "junk.pt"], tmp_path / "m")


def test_cli_parts_and_merge_with_jackknife(shards, tmp_path, invoke):
    folder, z = shards
    for i in range(3):
        code, _, stderr = invoke(["embeddings", folder, "--part", f"{i}/3", "--save-state", tmp_path / f"p{i}.pt",
                                  "--quiet"])
        assert code == 0, stderr
    assert not (tmp_path / "collapse_probe_out").exists()  # --save-state alone writes no --out
    code, stdout, stderr = invoke(["merge", *(tmp_path / f"p{i}.pt" for i in (2, 0, 1)), "--jackknife", "--json",
                                   "--out", tmp_path / "m"])
    assert code == 0, stderr
    document = json.loads(stdout)
    (name,) = document["layers"]
    assert document["layers"][name]["n_samples"] == 2400 and document["layers"][name]["stderr"]["rankme"] > 0
