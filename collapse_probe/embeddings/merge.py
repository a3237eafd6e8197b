"""Saved parts -> one spectrum: checked for overlap and for options, then the parallel (Chan) merge.

Parts are sorted into one canonical order (by the first shard and row each read) before they are
merged, so the same files given in any order give the same numbers, bit for bit; the Chan merge
is exact for any split, so the result equals one pass over the same rows up to float64 round-off.
With ``jackknife=True`` each part is one group of a delete-a-group jackknife
(:func:`~collapse_probe.metrics.grouped.jackknife_spectrum`): every metric gets a standard error
``sqrt((K - 1) / K sum_k (theta_(k) - mean theta)^2)`` from the K leave-one-part-out spectra.
Meaningful when the parts are alike (random splits, shards of shuffled rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collapse_probe.embeddings.provenance import (
    PROVENANCE_FORMAT,
    NormStats,
    dtype_summary,
    merge_ranges,
)
from collapse_probe.embeddings.sources import natural_key
from collapse_probe.embeddings.states import accumulator_of, load_state, with_provenance
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.grouped import jackknife_spectrum, pool_moments
from collapse_probe.results.spectrum import Spectrum

#: Options two parts must share, as the provenance records them.
SHARED_OPTIONS = ("center", "normalize", "ddof", "quantised", "skip_nonfinite", "key", "column")


def _order_key(document: dict[str, Any]) -> tuple:
    first = document["provenance"]["shards"][0]
    return (natural_key(Path(first["path"]).name), first["fingerprint"], first["read"][0][0])


def check_compatible(documents: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse parts of other widths, options or dtypes than the first, naming both files."""
    first_path, first = documents[0]
    reference = first["provenance"]
    for path, document in documents[1:]:
        theirs = document["provenance"]
        if theirs["dim"] != reference["dim"]:
            raise CollapseProbeError(f"{path} is {theirs['dim']} wide, {first_path} {reference['dim']}: parts of one "
                                     "merge must hold embeddings of one width")
        for option in SHARED_OPTIONS:
            mine, other = reference["options"].get(option), theirs["options"].get(option)
            if mine != other:
                raise CollapseProbeError(f"{path} was made with {option}={other!r}, {first_path} with {option}={mine!r}: "
                                         "parts of one merge must share center, normalize, ddof and the columns read")
        if theirs["dtype"] != reference["dtype"]:
            raise CollapseProbeError(f"{path} read {theirs['dtype']} rows, {first_path} {reference['dtype']}: parts of "
                                     "one merge must read one dtype")


def check_disjoint(documents: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse two parts holding the same rows of one shard (same fingerprint), naming both and the rows."""
    ranges: dict[str, list[tuple[int, int, Path, str]]] = {}
    for path, document in documents:
        for shard in document["provenance"]["shards"]:
            for start, stop in shard["read"]:
                ranges.setdefault(shard["fingerprint"], []).append((int(start), int(stop), path, shard["path"]))
    for held in ranges.values():
        held.sort(key=lambda r: (r[0], r[1]))
        for (_, a_stop, a_path, shard), (b_start, b_stop, b_path, _) in zip(held, held[1:], strict=False):
            if b_start < a_stop:
                raise CollapseProbeError(f"{a_path} and {b_path} both hold rows {b_start}-{min(a_stop, b_stop) - 1} of "
                                         f"{shard}: parts of one merge must not overlap")


def merged_provenance(documents: Sequence[tuple[Path, dict[str, Any]]], jackknife: bool) -> dict[str, Any]:
    """One provenance record for the merged rows: shards' read ranges joined, rows and norms summed."""
    shards: dict[str, dict[str, Any]] = {}
    norms = NormStats()
    for _, document in documents:
        provenance = document["provenance"]
        norms = norms.merge(NormStats.from_dict(provenance["norms"]))
        for shard in provenance["shards"]:
            entry = shards.setdefault(shard["fingerprint"], {**shard, "read": []})
            entry["read"] = merge_ranges([*entry["read"], *shard["read"]])
    records = sorted(shards.values(), key=lambda s: (natural_key(Path(s["path"]).name), s["fingerprint"]))
    first = documents[0][1]["provenance"]
    return {"format": PROVENANCE_FORMAT, "sources": sorted({s for _, d in documents for s in d["provenance"]["sources"]}),
            "layout": first["layout"], "shards": records, "n_shards": len(records),
            "rows": sum(d["provenance"]["rows"] for _, d in documents), "dim": first["dim"],
            "dtype": dtype_summary(records), "fingerprint_method": first["fingerprint_method"],
            "norms": norms.to_dict(), "options": {k: v for k, v in first["options"].items() if k != "part"},
            "merged_parts": [str(p) for p, _ in documents], "jackknife_groups": "parts" if jackknife else None,
            "ids": None, "quantised_note": first.get("quantised_note")}


def load_parts(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every state file loaded and checked (format, width, options, no overlap), in canonical order."""
    if not paths:
        raise CollapseProbeError("merge needs at least one state file")
    documents = [(Path(p), load_state(p)) for p in paths]
    if len({p.resolve() for p, _ in documents}) < len(documents):
        raise CollapseProbeError("a state file is given twice: each part is merged once")
    documents.sort(key=lambda item: _order_key(item[1]))
    check_compatible(documents)
    check_disjoint(documents)
    return documents


def merge_states(paths: Sequence[str | Path], *, jackknife: bool = False, name: str | None = None) -> Spectrum:
    """The spectrum of every part's rows together; with ``jackknife``, error bars with the parts as groups.

    Memory: two d x d float64 states at a time, or one per part with ``jackknife``.
    """
    documents = load_parts(paths)
    if jackknife and len(documents) < 2:
        raise CollapseProbeError("--jackknife needs at least 2 parts (each part is one group)")
    provenance = merged_provenance(documents, jackknife)
    if jackknife:
        groups = [accumulator_of(d).finalize() for _, d in documents]
        spectrum = jackknife_spectrum(pool_moments(groups), groups)
    else:
        total = accumulator_of(documents[0][1])
        for _, document in documents[1:]:
            total.merge(accumulator_of(document))
        spectrum = total.compute()
    if name is not None:
        spectrum = dataclasses.replace(spectrum, layer=name)
    return with_provenance(spectrum, provenance)
