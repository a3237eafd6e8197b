"""``.npy`` and ``.npz`` shards: the header parsed by ``numpy.lib.format``, the rows read in pieces.

A ``.npy`` file is a header (magic, version, a dict with ``descr``, ``fortran_order`` and
``shape``) followed by the raw array; rows ``[a, b)`` of a C-ordered (N, d) array are the bytes
``offset + a d s .. offset + b d s`` (``s`` the item size), read with one ``seek`` + ``readinto``.
A Fortran-ordered one is read column by column (d reads per chunk). A ``.npz`` is a zip of
``.npy`` members: the member is opened as a stream and read forward (a compressed member is
decompressed as it goes, never whole).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from collapse_probe.embeddings.shards import (
    RawLayout,
    RawReader,
    Shard,
    byte_view,
    check_matrix,
    choose_tensor,
)
from collapse_probe.errors import CollapseProbeError

#: numpy dtype kind + item size -> torch dtype, for the dtypes an embedding file can hold.
_TORCH = {("f", 2): torch.float16, ("f", 4): torch.float32, ("f", 8): torch.float64,
          ("i", 1): torch.int8, ("i", 2): torch.int16, ("i", 4): torch.int32, ("i", 8): torch.int64,
          ("u", 1): torch.uint8, ("b", 1): torch.bool}


def torch_dtype(dtype: np.dtype, where: str) -> torch.dtype:
    """The torch dtype of a numpy one; structured, object, complex or unsigned > 8 bits refused."""
    found = _TORCH.get((dtype.kind, dtype.itemsize)) if dtype.fields is None else None
    if found is None:
        raise CollapseProbeError(f"{where}: holds {dtype} values, not embeddings; give float16, bfloat16, float32 "
                                 "or float64 (or integer codes with --quantised)")
    return found


def read_header(stream: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header at the stream's position; leaves
    the stream at the first data byte."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(stream)
    except ValueError as error:
        raise CollapseProbeError(f"{where}: not a .npy array ({error})") from None
    raise CollapseProbeError(f"{where}: .npy format version {version} holds structured data, not embeddings")


def inspect_npy(path: Path) -> Shard:
    """The :class:`Shard` of a ``.npy`` file, from its header alone."""
    with open(path, "rb") as handle:
        shape, fortran, dtype = read_header(handle, str(path))
        offset = handle.tell()
    rows, dim = check_matrix(path, shape)
    swap = dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian)
    layout = RawLayout(offset, column_major=fortran and rows > 1 and dim > 1, swap=swap and dtype.itemsize > 1,
                       numpy_dtype=dtype)
    scratch = int(layout.column_major) + int(layout.swap)
    return Shard(path, "npy", rows, dim, torch_dtype(dtype, str(path)), layout=layout, scratch=scratch)


def npy_reader(shard: Shard) -> RawReader:
    return RawReader(shard)


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {info.filename.removesuffix(".npy"): info for info in archive.infolist() if info.filename.endswith(".npy")}


def inspect_npz(path: Path, key: str | None) -> Shard:
    """The :class:`Shard` of one member of a ``.npz`` (``key``, else ``embeddings``, else the only one)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CollapseProbeError(f"{path}: not a .npz archive ({error})") from None
    with archive:
        members = _members(archive)
        shapes = {}
        headers: dict[str, Any] = {}
        for name, info in members.items():
            with archive.open(info) as stream:
                headers[name] = read_header(stream, f"{path}:{name}")
                shapes[name] = headers[name][0]
        name = choose_tensor(path, shapes, key)
        with archive.open(members[name]) as stream:
            shape, fortran, dtype = read_header(stream, f"{path}:{name}")
            header_bytes = stream.tell()
    rows, dim = check_matrix(f"{path}:{name}", shape)
    if fortran and rows > 1 and dim > 1:
        raise CollapseProbeError(f"{path}:{name} is stored column-major (Fortran order), which a .npz member cannot "
                                 "be read in row chunks from: save np.ascontiguousarray(z) instead")
    swap = dtype.byteorder == ">" and dtype.itemsize > 1
    return Shard(path, "npz", rows, dim, torch_dtype(dtype, f"{path}:{name}"), name=name,
                 layout=(members[name].filename, header_bytes, dtype), scratch=int(swap),
                 notes={"compressed": members[name].compress_type != zipfile.ZIP_STORED})


class NpzReader:
    """Rows of one ``.npz`` member, read forward from its (possibly compressed) stream."""

    def __init__(self, shard: Shard):
        self.shard = shard
        member, self.header_bytes, self.numpy_dtype = shard.layout
        self.archive = zipfile.ZipFile(shard.path)
        self.stream = self.archive.open(member)
        self.row_bytes = shard.dim * self.numpy_dtype.itemsize
        self.position = 0  # the next row the stream is at
        self.stream.seek(self.header_bytes)

    def read(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = stop - start
        buffer = out[:rows] if out is not None else torch.empty((rows, self.shard.dim), dtype=self.shard.dtype)
        if start != self.position:  # compressed: zipfile decompresses up to there (forward only is cheap)
            self.stream.seek(self.header_bytes + start * self.row_bytes)
        view, done = byte_view(buffer), 0
        while done < len(view):
            got = self.stream.readinto(view[done:])
            if not got:
                raise CollapseProbeError(f"{self.shard.label}: the member ends early (truncated?)")
            done += got
        self.position = stop
        if self.numpy_dtype.byteorder == ">" and self.numpy_dtype.itemsize > 1:
            raw = buffer.reshape(-1).view(torch.uint8).numpy().view(self.numpy_dtype)
            buffer = torch.from_numpy(raw.astype(self.numpy_dtype.newbyteorder("="))).reshape(rows, self.shard.dim)
        return buffer

    def close(self) -> None:
        self.stream.close()
        self.archive.close()
