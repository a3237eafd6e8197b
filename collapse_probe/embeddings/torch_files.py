"""``.pt`` / ``.pth`` and ``.safetensors`` shards: where each tensor's bytes are, without loading any.

``torch.save`` writes a zip: ``<prefix>/data.pkl`` (the pickled structure, each tensor a call
``_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`` whose storage is a persistent
id ``("storage", <Type>Storage, key, location, numel)``) and each storage's raw bytes, stored
uncompressed, as ``<prefix>/data/<key>``. :func:`tensor_records` unpickles ``data.pkl`` with an
unpickler that imports nothing: the storage classes become dtypes, the rebuild calls become
records of (storage, offset, shape, stride), every other global an inert placeholder. A
``.safetensors`` file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the data (row-major). Both are
then read like a ``.npy`` (:class:`~collapse_probe.embeddings.shards.RawReader`), never mapped:
``safetensors.safe_open`` would memory-map the file.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from collapse_probe.embeddings.shards import (
    RawLayout,
    RawReader,
    Shard,
    check_matrix,
    choose_tensor,
)
from collapse_probe.errors import CollapseProbeError

_STORAGE_DTYPES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class _Storage(NamedTuple):
    key: str
    dtype: torch.dtype | None
    numel: int


class TensorRecord(NamedTuple):
    """Where one pickled tensor's elements are: ``storage``, element offset, shape, strides."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Inert:
    """Whatever a pickle names that is not a tensor: constructed, called and set up as nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass


class _Dict(dict):
    """A dict that also takes attributes (``state_dict()._metadata`` is set by pickle's BUILD)."""


class _StorageType(NamedTuple):
    dtype: torch.dtype | None


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *rest: Any) -> Any:
    if not isinstance(storage, _Storage):
        return _Inert()
    return TensorRecord(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_from_type(function: Any, new_type: Any, args: Any, state: Any) -> Any:
    return function(*args)


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` into dicts, lists and :class:`TensorRecord`; imports no module."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *rest: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type
        if module == "collections" and name == "OrderedDict":
            return _Dict
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(_STORAGE_DTYPES.get(name))
        return type(name, (_Inert,), {})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            kind = pid[1]
            return _Storage(str(pid[2]), kind.dtype if isinstance(kind, _StorageType) else None, int(pid[4]))
        return _Inert()


def _walk(obj: Any, prefix: str, found: dict[str, TensorRecord]) -> None:
    if isinstance(obj, TensorRecord):
        found[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str | int):
                _walk(value, f"{prefix}.{key}" if prefix else str(key), found)
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            _walk(value, f"{prefix}.{index}" if prefix else str(index), found)


def tensor_records(path: Path) -> tuple[zipfile.ZipFile, str, dict[str, TensorRecord]]:
    """The open archive, its folder prefix and every tensor in ``path`` by (dotted) name."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise CollapseProbeError(f"{path}: not a torch.save zip archive (saved by PyTorch < 1.6, or not a .pt file): "
                                 "re-save it with torch.save, or as .npy") from None
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        archive.close()
        raise CollapseProbeError(f"{path}: not a torch.save archive (no data.pkl)")
    try:
        obj = _RecordingUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
    except Exception as error:  # noqa: BLE001 - a pickle that cannot even be walked is bad input
        archive.close()
        raise CollapseProbeError(f"{path}: cannot read its structure ({type(error).__name__}: {error})") from None
    found: dict[str, TensorRecord] = {}
    _walk(obj, "", found)
    return archive, pickles[0].split("/")[0], found


def _data_offset(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> int:
    """Byte offset of a stored zip member's data: after its 30-byte local header, name and extra field."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise CollapseProbeError(f"{path}: tensor data {info.filename} is compressed; re-save with torch.save")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def inspect_pt(path: Path, key: str | None) -> Shard:
    """The :class:`Shard` of one (N, d) tensor of a ``torch.save`` file, from ``data.pkl`` alone."""
    archive, prefix, records = tensor_records(path)
    with archive:
        name = choose_tensor(path, {n: r.shape for n, r in records.items()}, key)
        record = records[name]
        label = f"{path}:{name}" if name else str(path)
        rows, dim = check_matrix(label, record.shape)
        if record.storage.dtype is None:
            raise CollapseProbeError(f"{label}: tensor of an unknown storage type: save it as float32 or .npy")
        if (archive.read(f"{prefix}/byteorder") if f"{prefix}/byteorder" in archive.namelist() else b"little") != b"little":
            raise CollapseProbeError(f"{label}: saved big-endian; re-save it on this machine")
        row_major = record.stride == (dim, 1) or rows <= 1
        column_major = not row_major and (record.stride == (1, rows) or dim <= 1)
        if not (row_major or column_major):
            raise CollapseProbeError(f"{label}: stored with strides {record.stride}, neither row- nor column-major: "
                                     "save z.contiguous()")
        itemsize = torch.empty((), dtype=record.storage.dtype).element_size()
        if record.offset + rows * dim > record.storage.numel:
            raise CollapseProbeError(f"{label}: its storage holds fewer elements than its shape needs")
        start = _data_offset(archive, archive.getinfo(f"{prefix}/data/{record.storage.key}"), path)
    layout = RawLayout(start + record.offset * itemsize, column_major=column_major)
    return Shard(path, "pt", rows, dim, record.storage.dtype, name=name or None, layout=layout,
                 scratch=int(column_major))


def safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """``(data start, header)`` of a ``.safetensors`` file (``__metadata__`` dropped)."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CollapseProbeError(f"{path}: not a .safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise CollapseProbeError(f"{path}: not a .safetensors file (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise CollapseProbeError(f"{path}: not a .safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return 8 + length, header


def inspect_safetensors(path: Path, key: str | None) -> Shard:
    """The :class:`Shard` of one (N, d) tensor of a ``.safetensors`` file, from its header."""
    start, header = safetensors_header(path)
    name = choose_tensor(path, {n: entry["shape"] for n, entry in header.items()}, key)
    entry = header[name]
    rows, dim = check_matrix(f"{path}:{name}", entry["shape"])
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CollapseProbeError(f"{path}:{name}: holds {entry['dtype']} values; give float16, bfloat16, float32 or "
                                 "float64 (or integer codes with --quantised)")
    begin, end = (int(v) for v in entry["data_offsets"])
    if end - begin != rows * dim * torch.empty((), dtype=dtype).element_size():
        raise CollapseProbeError(f"{path}:{name}: header data_offsets do not match its shape")
    return Shard(path, "safetensors", rows, dim, dtype, name=name, layout=RawLayout(start + begin))


def raw_reader(shard: Shard) -> RawReader:
    return RawReader(shard)
