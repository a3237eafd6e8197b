"""``compare`` of embedding sets: the same number of rows, and the same ids where both carry them.

Two spectra of embeddings on disk (``collapse-probe embeddings --out DIR`` writes them) compare
two encoders only if they embed the same items: sets of different row counts are refused, and
where both name an id column (``--id-column``), sets whose ids differ, naming the first row
whose ids differ (read from the ``ids.jsonl`` each run writes beside its spectrum file).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collapse_probe.errors import CollapseProbeError


def embedding_record(result: Any) -> dict[str, Any] | None:
    """The provenance of a loaded result's embedding spectrum (``extra["embeddings"]``), if any."""
    for spectrum in result.spectra.values():
        record = spectrum.extra.get("embeddings") if isinstance(spectrum.extra, dict) else None
        if isinstance(record, dict) and "rows" in record:
            return record
    return None


def _ids_file(source: str | Path, result: Any, record: dict[str, Any]) -> Path | None:
    name = (record.get("ids") or {}).get("file")
    if not name:
        return None
    folder = Path(result.source.get("spectrum_file", source)).parent
    return folder / name if (folder / name).is_file() else None


def first_id_mismatch(a: Path, b: Path) -> tuple[int, str, str] | None:
    """``(row, id in a, id in b)`` of the first line that differs between two ids files, else None."""
    with open(a, encoding="utf-8") as left, open(b, encoding="utf-8") as right:
        for row, (x, y) in enumerate(itertools.zip_longest(left, right)):
            if x != y:
                return row, (x or "<end>").rstrip("\n"), (y or "<end>").rstrip("\n")
    return None


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refuse_unpaired_embedding_sets(results: Mapping[str, Any]) -> None:
    """Refuse (one line) two embedding sets of different row counts, or with differing ids.

    ``results``: source name -> loaded result (saved spectrum files). Sets without an embedding
    provenance record (checkpoint spectra, older files) are not checked.
    """
    sets = [(source, result, record) for source, result in results.items()
            if (record := embedding_record(result)) is not None]
    if len(sets) < 2:
        return
    first_source, first_result, first = sets[0]
    for source, result, record in sets[1:]:
        if record["rows"] != first["rows"]:
            raise CollapseProbeError(f"{source} holds {record['rows']} rows, {first_source} {first['rows']}: "
                                     "compare embedding sets of the same items")
        mine, theirs = first.get("ids"), record.get("ids")
        if not mine or not theirs or mine["sha256"] == theirs["sha256"]:
            continue
        a, b = _ids_file(first_source, first_result, first), _ids_file(source, result, record)
        if a is None or b is None or _file_hash(a) != mine["sha256"] or _file_hash(b) != theirs["sha256"]:
            raise CollapseProbeError(f"{source} and {first_source} hold different ids ({theirs['column']} sha256 "
                                     f"{theirs['sha256'][:12]} vs {mine['sha256'][:12]}; their ids.jsonl files are "
                                     "not beside the spectra to name the first mismatch)")
        row, left, right = first_id_mismatch(a, b) or (-1, "", "")
        raise CollapseProbeError(f"{source} and {first_source} hold different ids: first at row {row}, {right} in "
                                 f"{source} and {left} in {first_source}: compare embeddings of the same items, "
                                 "in the same order")
