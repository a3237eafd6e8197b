"""Parquet shards: an embedding column (a list or fixed-size-list of numbers), or one column per dimension.

Needs pyarrow (``pip install 'collapse-probe[parquet]'``), imported only when a parquet file is
read. Rows are read with ``ParquetFile.iter_batches`` from the row group holding the first row
wanted (the footer says where each starts), one chunk of rows at a time: a file is never read
whole. The id column (``--id-column``) is read the same way by :func:`iter_ids`.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapse_probe.embeddings.numpy_files import torch_dtype
from collapse_probe.embeddings.shards import Shard
from collapse_probe.errors import CollapseProbeError

_EMBEDDING_NAMES = ("embedding", "embeddings", "emb", "vector", "features")


def require_pyarrow() -> Any:
    """``pyarrow.parquet``, or a one-line error naming the extra that installs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CollapseProbeError("reading parquet needs pyarrow: pip install 'collapse-probe[parquet]' "
                                 "(or pip install 'pyarrow>=14')") from None
    return pq


@dataclass(frozen=True)
class ParquetLayout:
    """``kind``: ``list`` (variable-length lists), ``fixed`` (fixed-size lists) or ``columns``."""

    kind: str
    columns: tuple[str, ...]
    group_starts: tuple[int, ...]


def open_file(path: Path) -> Any:
    pq = require_pyarrow()
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise CollapseProbeError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from None


def _is_number(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type)


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type)) and _is_number(arrow_type.value_type)


def choose_columns(path: Path, schema: Any, column: str | None, id_column: str | None) -> tuple[str, ...]:
    """The embedding column(s): ``column`` (a name, or a glob matching one column per dimension,
    in schema order); else the one list column; else every numeric column when all are."""
    names = [n for n in schema.names if n != id_column]
    if column is not None and any(c in column for c in "*?["):
        matched = tuple(n for n in names if fnmatch.fnmatchcase(n, column))
        if not matched:
            raise CollapseProbeError(f"{path}: no column matches {column!r}; it has {', '.join(schema.names)}")
        return matched
    if column is not None:
        if column not in schema.names:
            raise CollapseProbeError(f"{path}: no column {column!r}; it has {', '.join(schema.names)}")
        return (column,)
    lists = [n for n in names if _is_list(schema.field(n).type)]
    named = [n for n in lists if n.lower() in _EMBEDDING_NAMES]
    if len(lists) == 1 or len(named) == 1:
        return (lists[0] if len(lists) == 1 else named[0],)
    if not lists and len(names) >= 2 and all(_is_number(schema.field(n).type) for n in names):
        return tuple(names)
    listing = ", ".join(f"{n} ({schema.field(n).type})" for n in schema.names[:8])
    raise CollapseProbeError(f"{path}: cannot tell which column holds the embeddings ({listing}): name it with "
                             "--column NAME (a list column), or --column 'PREFIX*' for one column per dimension")


def inspect_parquet(path: Path, column: str | None, id_column: str | None) -> Shard:
    """The :class:`Shard` of a parquet file's embeddings, from its footer (and, for variable-length
    lists, the first row)."""
    handle = open_file(path)  # first: a missing pyarrow is named in one line
    import pyarrow as pa

    schema = handle.schema_arrow
    if id_column is not None and id_column not in schema.names:
        raise CollapseProbeError(f"{path}: no id column {id_column!r}; it has {', '.join(schema.names)}")
    columns = choose_columns(path, schema, column, id_column)
    types = [schema.field(c).type for c in columns]
    if len(columns) == 1 and _is_list(types[0]):
        kind = "fixed" if pa.types.is_fixed_size_list(types[0]) else "list"
        value_type = types[0].value_type
        dim = types[0].list_size if kind == "fixed" else _first_length(handle, columns[0], path)
    else:
        bad = [c for c, t in zip(columns, types, strict=True) if not _is_number(t)]
        if bad:
            raise CollapseProbeError(f"{path}: column {bad[0]!r} is {schema.field(bad[0]).type}, not numbers")
        kind, dim = "columns", len(columns)
        value_type = types[0]
        if any(t != value_type for t in types):
            raise CollapseProbeError(f"{path}: the {len(columns)} embedding columns have different types "
                                     f"({value_type}, {next(t for t in types if t != value_type)})")
    dtype = torch_dtype(np.dtype(value_type.to_pandas_dtype()), f"{path}:{columns[0]}")
    metadata = handle.metadata
    starts = tuple(np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]).tolist())
    name = columns[0] if len(columns) == 1 else f"{columns[0]}..{columns[-1]}"
    return Shard(path, "parquet", int(metadata.num_rows), int(dim), dtype, name=name,
                 layout=ParquetLayout(kind, columns, starts), ids_path=path if id_column else None, scratch=2)


def _first_length(handle: Any, column: str, path: Path) -> int:
    for batch in handle.iter_batches(batch_size=1, columns=[column]):
        if batch.num_rows:
            value = batch.column(0)[0]
            if not value.is_valid:
                raise CollapseProbeError(f"{path}: row 0 of {column!r} is null")
            return len(value)
    return 0


def _matrix(batch: Any, layout: ParquetLayout, dim: int, where: str, first_row: int) -> np.ndarray:
    """A record batch's embeddings as an (n, dim) array; nulls and ragged lists refused naming the row."""
    import pyarrow.compute as pc

    arrays = [batch.column(i) for i in range(batch.num_columns)]
    for array in arrays:
        if array.null_count:
            row = first_row + int(np.flatnonzero(~array.is_valid().to_numpy(zero_copy_only=False))[0])
            raise CollapseProbeError(f"{where}: row {row} is null")
    if layout.kind == "columns":
        return np.stack([a.to_numpy(zero_copy_only=False) for a in arrays], axis=1)
    array = arrays[0]
    if layout.kind == "list":
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if (lengths != dim).any():
            row = int(np.flatnonzero(lengths != dim)[0])
            raise CollapseProbeError(f"{where}: row {first_row + row} has {lengths[row]} values, the first row {dim}: "
                                     "every embedding must have the same width")
    values = array.flatten()
    if values.null_count:
        raise CollapseProbeError(f"{where}: a null value inside an embedding near row {first_row}")
    return values.to_numpy(zero_copy_only=False).reshape(-1, dim)


class ParquetReader:
    """Rows of a parquet shard, read forward in record batches of ``chunk_rows``."""

    def __init__(self, shard: Shard, chunk_rows: int):
        self.shard = shard
        self.layout: ParquetLayout = shard.layout
        self.handle = open_file(shard.path)
        self.chunk_rows = max(1, chunk_rows)
        self.position = -1
        self.batches: Iterator[Any] = iter(())
        self.pending: Any = None

    def _seek(self, start: int) -> None:
        group = bisect.bisect_right(self.layout.group_starts, start) - 1
        groups = list(range(group, len(self.layout.group_starts) - 1))
        self.batches = self.handle.iter_batches(batch_size=self.chunk_rows, row_groups=groups,
                                                columns=list(self.layout.columns), use_threads=False)
        self.position, self.pending = self.layout.group_starts[group], None
        while self.position < start:
            self._take(start - self.position)

    def _take(self, limit: int) -> Any:
        batch = self.pending if self.pending is not None else next(self.batches, None)
        if batch is None:
            raise CollapseProbeError(f"{self.shard.path}: ends before row {self.position} (changed while read?)")
        taken = batch.slice(0, limit)
        self.pending = batch.slice(limit) if limit < batch.num_rows else None
        self.position += taken.num_rows
        return taken

    def read(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        if start != self.position:
            self._seek(start)
        parts = []
        while self.position < stop:
            first = self.position
            batch = self._take(stop - self.position)
            parts.append(_matrix(batch, self.layout, self.shard.dim, str(self.shard.path), first))
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if not rows.flags.writeable or not rows.flags.c_contiguous:  # a view of arrow's buffers
            rows = np.array(rows, order="C")
        return torch.from_numpy(rows)

    def close(self) -> None:
        self.handle.close()


def row_count(path: Path) -> int:
    """Rows in a parquet file, from its footer."""
    return int(open_file(path).metadata.num_rows)


def iter_ids(path: Path, column: str, start: int, stop: int, batch_rows: int = 65536) -> Iterator[list[Any]]:
    """The values of ``column`` in rows ``[start, stop)``, as Python lists of at most ``batch_rows``."""
    handle = open_file(path)
    if column not in handle.schema_arrow.names:
        raise CollapseProbeError(f"{path}: no id column {column!r}; it has {', '.join(handle.schema_arrow.names)}")
    position = 0
    for batch in handle.iter_batches(batch_size=batch_rows, columns=[column], use_threads=False):
        lo, hi = max(start - position, 0), min(stop - position, batch.num_rows)
        if hi > lo:
            yield batch.column(0).slice(lo, hi - lo).to_pylist()
        position += batch.num_rows
        if position >= stop:
            break
    handle.close()
