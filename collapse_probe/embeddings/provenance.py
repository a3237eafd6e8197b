"""What a spectrum of embeddings on disk was made from: shards, rows, fingerprints, dtype, unit norms, ids.

The record (``Spectrum.extra["embeddings"]``, format :data:`PROVENANCE_FORMAT`) lists every shard
read with its row count, the rows read of it, the dtype read and a content :func:`fingerprint`;
the rows read in all, whether every row is a unit vector (:class:`NormStats`), and the ids' hash
when an id column was named (:func:`hash_ids`). ``merge`` uses the fingerprints and row ranges to
refuse parts that overlap; ``compare`` uses the row counts and ids to refuse unpaired sets.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from collapse_probe.embeddings.parquet_files import iter_ids
from collapse_probe.embeddings.sharding import Piece
from collapse_probe.embeddings.shards import Shard, dtype_name

PROVENANCE_FORMAT = "collapse-probe/embeddings-provenance-v1"
#: Bytes hashed at each end of a file by :func:`fingerprint`.
FINGERPRINT_BYTES = 64 * 1024
FINGERPRINT = ("sha256 over the file size in bytes (decimal ASCII, then a newline), its first 64 KiB and its last "
               "64 KiB (the whole file when under 128 KiB), then the name of the member/tensor/column read")
#: A row is a unit vector when | ||z|| - 1 | < UNIT_TOLERANCE (float16 rounding of a unit vector stays within 5e-4).
UNIT_TOLERANCE = 1e-3


def fingerprint(shard: Shard) -> str:
    """``"sha256:<hex>"`` of a shard's file as :data:`FINGERPRINT` says: cheap (128 KiB read),
    and different for files that differ in size, header, first or last rows."""
    digest = hashlib.sha256()
    with open(shard.path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(0)
        head = handle.read(min(size, FINGERPRINT_BYTES))
        rest = size - len(head)
        handle.seek(size - min(rest, FINGERPRINT_BYTES))
        tail = handle.read(min(rest, FINGERPRINT_BYTES))
    digest.update(f"{size}\n".encode())
    digest.update(head)
    digest.update(tail)
    digest.update((shard.name or "").encode())
    return f"sha256:{digest.hexdigest()}"


@dataclass
class NormStats:
    """Row norms seen: the smallest and largest finite ``||z||``, and rows not within
    :data:`UNIT_TOLERANCE` of 1 (non-finite rows included)."""

    rows: int = 0
    off_unit: int = 0
    min_norm: float = math.inf
    max_norm: float = -math.inf

    def update(self, rows: torch.Tensor, block: int = 8192) -> None:
        """Add the norms of a (B, d) chunk, ``block`` rows at a time (no full-size float copy)."""
        wide = torch.float64 if rows.dtype == torch.float64 else torch.float32
        for start in range(0, rows.shape[0], block):
            part = rows[start : start + block]
            norms = torch.linalg.vector_norm(part if part.is_floating_point() else part.to(wide), dim=1, dtype=wide)
            finite = norms[torch.isfinite(norms)]
            self.rows += part.shape[0]
            self.off_unit += int((~((norms - 1).abs() < UNIT_TOLERANCE)).sum())
            if finite.numel():
                self.min_norm = min(self.min_norm, float(finite.min()))
                self.max_norm = max(self.max_norm, float(finite.max()))

    def merge(self, other: NormStats) -> NormStats:
        return NormStats(self.rows + other.rows, self.off_unit + other.off_unit,
                         min(self.min_norm, other.min_norm), max(self.max_norm, other.max_norm))

    def to_dict(self) -> dict[str, Any]:
        unit = self.rows > 0 and self.off_unit == 0
        note = (f"every row has | ||z|| - 1 | < {UNIT_TOLERANCE:g}: the spectrum is that of unit vectors "
                "(L2-normalised embeddings, e.g. a clip-retrieval dump)" if unit else
                f"{self.off_unit} of {self.rows} rows are not unit vectors")
        return {"unit_norm": unit, "rows_off_unit": self.off_unit, "rows_checked": self.rows,
                "min_norm": None if math.isinf(self.min_norm) else self.min_norm,
                "max_norm": None if math.isinf(self.max_norm) else self.max_norm,
                "tolerance": UNIT_TOLERANCE, "note": note}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        low, high = data.get("min_norm"), data.get("max_norm")
        return cls(int(data["rows_checked"]), int(data["rows_off_unit"]),
                   math.inf if low is None else float(low), -math.inf if high is None else float(high))


def shard_records(shards: Sequence[Shard], read: Sequence[Piece], fingerprints: dict[int, str]) -> list[dict[str, Any]]:
    """One entry per shard with rows read: path, kind, name, rows, dtype, fingerprint, read ranges."""
    ranges: dict[int, list[list[int]]] = {}
    for piece in read:
        ranges.setdefault(piece.shard, []).append([piece.start, piece.stop])
    return [{"path": str(shards[i].path), "kind": shards[i].kind, "name": shards[i].name, "rows": shards[i].rows,
             "dtype": dtype_name(shards[i].dtype), "fingerprint": fingerprints[i], "read": merge_ranges(ranges[i])}
            for i in sorted(ranges)]


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[list[int]]:
    """Sorted ``[start, stop)`` ranges with touching ones joined (overlaps are the caller's to refuse).

    >>> merge_ranges([[5, 9], [0, 5], [12, 14]])
    [[0, 9], [12, 14]]
    """
    joined: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in ranges):
        if joined and start == joined[-1][1]:
            joined[-1][1] = stop
        else:
            joined.append([start, stop])
    return joined


def dtype_summary(records: Sequence[dict[str, Any]]) -> str:
    """The dtype read: one name, or ``"mixed: a, b"`` when the shards differ."""
    names = sorted({r["dtype"] for r in records})
    return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


def hash_ids(shards: Sequence[Shard], read: Sequence[Piece], column: str, out: Path | None) -> dict[str, Any]:
    """sha256 of the ids of the rows read, in order (one JSON value per line, as written to ``out``
    when given): ``{"column", "count", "sha256", "file"}``."""
    digest, count = hashlib.sha256(), 0
    handle = open(out, "w", encoding="utf-8") if out is not None else None  # noqa: SIM115 - closed below
    try:
        for piece in read:
            shard = shards[piece.shard]
            for values in iter_ids(shard.ids_path, column, piece.start, piece.stop):
                text = "".join(json.dumps(v, default=str) + "\n" for v in values)
                digest.update(text.encode())
                count += len(values)
                if handle is not None:
                    handle.write(text)
    finally:
        if handle is not None:
            handle.close()
    return {"column": column, "count": count, "sha256": digest.hexdigest(), "file": None if out is None else out.name}
