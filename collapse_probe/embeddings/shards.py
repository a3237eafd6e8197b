"""One shard of embeddings on disk: what it holds, and the raw-byte reader most formats share.

A :class:`Shard` is what a file's header says (rows, width, dtype, where the bytes are), read
without touching the data. Each format module (:mod:`.numpy_files`, :mod:`.torch_files`,
:mod:`.parquet_files`) turns a path into shards and a shard into a reader whose
``read(start, stop, out)`` returns rows ``[start, stop)`` as a ``(stop - start, d)`` tensor of the
stored dtype. Readers never load a whole file and never memory-map one: a memory map's touched
pages stay resident, so a pass over a 15 GB file would grow the process by 15 GB.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from collapse_probe.errors import CollapseProbeError

#: Embedding dtypes read as they are (cast to float64 exactly inside the accumulator).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Integer dtypes: ids or labels unless the user says they are quantised embeddings.
INTEGER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def fed_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype rows of ``dtype`` are handed to the accumulator in: floats as stored, integers
    in the smallest float that holds every value exactly (float32 up to 16 bits, else float64).

    >>> fed_dtype(torch.float16), fed_dtype(torch.int8), fed_dtype(torch.int64)
    (torch.float16, torch.float32, torch.float64)
    """
    if dtype in FLOAT_DTYPES:
        return dtype
    return torch.float32 if dtype in (torch.bool, torch.uint8, torch.int8, torch.int16) else torch.float64


@dataclass(frozen=True)
class Shard:
    """One (rows, dim) array in one file.

    ``kind``: npy, npz, pt, safetensors or parquet; ``name``: the npz member, tensor key or
    parquet column(s) read (``None`` for a plain ``.npy``); ``layout``: where the bytes are, as
    the format module that made it needs (opaque elsewhere); ``ids_path``: the parquet file
    holding this shard's ids (the shard itself, or clip-retrieval's ``metadata_{i}.parquet``).
    ``scratch``: how many extra chunk-sized buffers its reader needs (column-major data,
    byte-swapping, parquet conversions), counted against the memory budget.
    """

    path: Path
    kind: str
    rows: int
    dim: int
    dtype: torch.dtype
    name: str | None = None
    layout: Any = None
    ids_path: Path | None = None
    scratch: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name it: the path, with the member or key after a colon."""
        return f"{self.path}:{self.name}" if self.name and self.kind in ("npz", "pt", "safetensors") else str(self.path)


class Reader(Protocol):
    """Reads rows of one shard; ``close`` releases its file."""

    def read(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RawLayout:
    """A dense (rows, dim) array at byte ``offset`` of a file, row-major or column-major,
    little-endian unless ``swap`` (then ``numpy_dtype`` is the stored big-endian dtype)."""

    offset: int
    column_major: bool = False
    swap: bool = False
    numpy_dtype: Any = None


def byte_view(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous tensor (any dtype, bfloat16 included)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def read_exact(handle: Any, offset: int, view: memoryview, what: str) -> None:
    """Fill ``view`` with the bytes of ``handle`` from ``offset`` on (an explicit read, no map)."""
    handle.seek(offset)
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise CollapseProbeError(f"{what}: the file ends early (truncated?): {len(view) - done} bytes missing")
        done += got


class RawReader:
    """Rows of a :class:`RawLayout` array by explicit ``seek`` + ``readinto`` into a reused buffer."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self.layout: RawLayout = shard.layout
        self.handle = open(shard.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.itemsize = torch.empty((), dtype=shard.dtype).element_size()

    def read(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        rows, dim = stop - start, self.shard.dim
        buffer = out[:rows] if out is not None else torch.empty((rows, dim), dtype=self.shard.dtype)
        if self.layout.column_major:  # column j holds `rows` contiguous values: d reads, one transpose
            columns = torch.empty((dim, rows), dtype=self.shard.dtype)
            view = byte_view(columns)
            width = rows * self.itemsize
            for j in range(dim):
                offset = self.layout.offset + (j * self.shard.rows + start) * self.itemsize
                read_exact(self.handle, offset, view[j * width : (j + 1) * width], self.shard.label)
            buffer.copy_(columns.T)
        else:
            offset = self.layout.offset + start * dim * self.itemsize
            read_exact(self.handle, offset, byte_view(buffer), self.shard.label)
        if self.layout.swap:  # big-endian on disk: byte-swap into native order (a new array)
            raw = buffer.reshape(-1).view(torch.uint8).numpy().view(self.layout.numpy_dtype)
            buffer = torch.from_numpy(raw.astype(self.layout.numpy_dtype.newbyteorder("="))).reshape(rows, dim)
        return buffer

    def close(self) -> None:
        self.handle.close()


def choose_tensor(path: Path, shapes: Mapping[str, Sequence[int]], key: str | None) -> str:
    """The name of the (N, d) tensor to read from a file holding ``shapes`` (name -> shape).

    ``key`` if given; else one called ``embeddings``; else the only one. Anything else is
    refused in one line listing what the file holds (a model's weights are named as such).
    """
    if key is not None:
        if key not in shapes:
            raise CollapseProbeError(f"{path}: no tensor {key!r}; it holds {', '.join(shapes) or 'no tensors'}")
        return key
    if "embeddings" in shapes:
        return "embeddings"
    if len(shapes) == 1:
        return next(iter(shapes))
    if not shapes:
        raise CollapseProbeError(f"{path} holds no tensors")
    shown = [f"{name} {tuple(shape)}" for name, shape in list(shapes.items())[:6]]
    listing = ", ".join(shown) + (f", ... ({len(shapes)} in all)" if len(shapes) > 6 else "")
    message = f"{path} holds {len(shapes)} tensors ({listing}): name the (N, d) embeddings with --key"
    if any(name.endswith((".weight", ".bias", ".running_mean")) for name in shapes):
        message += (f"; this looks like a model's weights: probe the model with "
                    f"`collapse-probe spectrum {path} --arch NAME --data DIR`")
    raise CollapseProbeError(message)


def check_matrix(path: Path | str, shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, dim)`` of a 2-D shape; anything else refused naming the shape."""
    if len(shape) != 2:
        raise CollapseProbeError(f"{path}: expected an (N, d) array, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def file_size(path: Path) -> int:
    return os.stat(path).st_size
