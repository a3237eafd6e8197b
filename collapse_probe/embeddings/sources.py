"""What the user named -> an ordered list of shards, checked before any statistics are spent.

A source is a file, a folder, a glob or a list of them. Files keep the order given; a folder's or
a glob's files are in natural order (``img_emb_2`` before ``img_emb_10``), so the order is stable
whatever the file system lists first. A folder in the clip-retrieval layout
(``img_emb/img_emb_{i}.npy`` beside ``metadata/metadata_{i}.parquet``, or the ``img_emb`` folder
itself) reads the embeddings from the ``.npy`` shards and, with ``--id-column``, the ids from the
metadata of the same ``i``. Every header is read first: a shard of another width, integer data
(unless quantised) or a metadata file of another row count is refused before any row is read.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from collapse_probe.embeddings.numpy_files import inspect_npy, inspect_npz
from collapse_probe.embeddings.parquet_files import inspect_parquet, row_count
from collapse_probe.embeddings.shards import INTEGER_DTYPES, Shard, dtype_name
from collapse_probe.embeddings.torch_files import inspect_pt, inspect_safetensors
from collapse_probe.errors import CollapseProbeError

SUFFIXES = {".npy": "npy", ".npz": "npz", ".pt": "pt", ".pth": "pt", ".safetensors": "safetensors",
            ".parquet": "parquet"}
CLIP_FOLDERS = ("img_emb", "text_emb")


@dataclass(frozen=True)
class ShardSet:
    """The shards to read, in order; ``layout``: ``clip-retrieval`` or ``files``."""

    shards: tuple[Shard, ...]
    sources: tuple[str, ...]
    layout: str

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def natural_key(path: Path | str) -> list[tuple[int, int, str]]:
    """Sort key putting ``x_2`` before ``x_10``.

    >>> sorted(["e_10.npy", "e_2.npy", "e_1.npy"], key=natural_key)
    ['e_1.npy', 'e_2.npy', 'e_10.npy']
    """
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(path)) if t]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _clip_root(folder: Path, key: str | None) -> tuple[Path, Path] | None:
    """``(embedding folder, metadata folder)`` when ``folder`` is in the clip-retrieval layout."""
    if folder.name in CLIP_FOLDERS and key is None:
        return folder, folder.parent / "metadata"
    wanted = [key] if key in CLIP_FOLDERS else list(CLIP_FOLDERS)
    present = [name for name in wanted if (folder / name).is_dir()]
    if key is not None and key not in CLIP_FOLDERS and any((folder / n).is_dir() for n in CLIP_FOLDERS):
        raise CollapseProbeError(f"{folder}: --key for a clip-retrieval folder is img_emb or text_emb, not {key!r}")
    return (folder / present[0], folder / "metadata") if present else None


def _folder_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES), key=natural_key)
    if not files:
        raise CollapseProbeError(f"{folder}: no embedding files (.npy, .npz, .pt, .safetensors, .parquet) in it")
    kinds = sorted({SUFFIXES[p.suffix.lower()] for p in files})
    if len(kinds) > 1:
        raise CollapseProbeError(f"{folder} holds {' and '.join(kinds)} files: give a glob naming the embeddings "
                                 f"(e.g. '{folder}/*.{kinds[0]}')")
    return files


def expand(sources: Sequence[str | Path], key: str | None) -> tuple[list[tuple[Path, Path | None]], str]:
    """Every embedding file in order, each with its clip-retrieval metadata file (or None)."""
    found: list[tuple[Path, Path | None]] = []
    layout = "files"
    for source in sources:
        text = str(source)
        path = Path(text)
        if path.is_dir():
            clip = _clip_root(path, key)
            if clip is not None:
                layout = "clip-retrieval"
                files = sorted(clip[0].glob("*.npy"), key=natural_key)
                if not files:
                    raise CollapseProbeError(f"{clip[0]}: no .npy shards in this clip-retrieval folder")
                found += [(f, _metadata_file(f, clip[1])) for f in files]
            else:
                found += [(f, None) for f in _folder_files(path)]
        elif path.is_file():
            found.append((path, None))
        elif _is_glob(text):
            matched = sorted((Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()), key=natural_key)
            if not matched:
                raise CollapseProbeError(f"no embedding files match {text!r}")
            found += [(p, None) for p in matched]
        else:
            raise CollapseProbeError(f"embeddings file not found: {text}")
    seen: dict[Path, Path] = {}
    for path, _ in found:
        resolved = path.resolve()
        if resolved in seen:
            raise CollapseProbeError(f"{path} is given twice (also as {seen[resolved]}): each shard is read once")
        seen[resolved] = path
    return found, layout


def _metadata_file(shard: Path, metadata: Path) -> Path | None:
    """clip-retrieval's ``metadata/metadata_{i}.parquet`` for ``img_emb/img_emb_{i}.npy`` (None if absent)."""
    match = re.search(r"(\d+)$", shard.stem)
    if match is None or not metadata.is_dir():
        return None
    candidate = metadata / f"metadata_{match.group(1)}.parquet"
    return candidate if candidate.is_file() else None


def inspect(path: Path, *, key: str | None, column: str | None, id_column: str | None) -> Shard:
    """The :class:`Shard` of one embedding file, from its header."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise CollapseProbeError(f"{path}: unsupported embeddings file; use .npy, .npz, .pt, .safetensors or .parquet")
    if kind == "npy":
        return inspect_npy(path)
    if kind == "npz":
        return inspect_npz(path, key)
    if kind == "pt":
        return inspect_pt(path, key)
    if kind == "safetensors":
        return inspect_safetensors(path, key)
    return inspect_parquet(path, column, id_column)


def resolve(sources: str | Path | Sequence[str | Path], *, key: str | None = None, column: str | None = None,
            id_column: str | None = None, quantised: bool = False) -> ShardSet:
    """The checked, ordered :class:`ShardSet` of ``sources`` (see the module docstring)."""
    listed = [sources] if isinstance(sources, str | Path) else list(sources)
    if not listed:
        raise CollapseProbeError("no embeddings given")
    files, layout = expand(listed, key)
    shard_key = None if layout == "clip-retrieval" else key
    shards = []
    for path, metadata in files:
        shard = inspect(path, key=shard_key, column=column, id_column=id_column)
        if metadata is not None:
            shard = _with_metadata(shard, metadata, id_column)
        shards.append(shard)
    check_shards(shards, quantised=quantised, id_column=id_column)
    return ShardSet(tuple(shards), tuple(str(s) for s in listed), layout)


def _with_metadata(shard: Shard, metadata: Path, id_column: str | None) -> Shard:
    rows = row_count(metadata)
    if rows != shard.rows:
        raise CollapseProbeError(f"{metadata} has {rows} rows, {shard.path} {shard.rows}: a clip-retrieval shard and "
                                 "its metadata must hold the same rows in the same order")
    return replace(shard, ids_path=metadata if id_column else None)


def check_shards(shards: Sequence[Shard], *, quantised: bool, id_column: str | None) -> None:
    """Refuse, in one line, a width differing from the first shard's, integer data (unless
    ``quantised``), ids asked of shards without them, or no rows at all."""
    first = shards[0]
    for shard in shards:
        if shard.dim != first.dim:
            raise CollapseProbeError(f"{shard.label} is {shard.dim} wide, {first.label} (the first shard) {first.dim}: "
                                     "every shard must have the same width")
    for shard in shards:
        if shard.dtype in INTEGER_DTYPES and not quantised:
            raise CollapseProbeError(f"{shard.label} holds {dtype_name(shard.dtype)} values: integer arrays are "
                                     "usually ids or labels; pass --quantised if they are quantised embeddings")
    if id_column is not None:
        missing = next((s for s in shards if s.ids_path is None), None)
        if missing is not None:
            raise CollapseProbeError(f"--id-column {id_column}: {missing.path} has no id column (ids come from "
                                     "parquet shards or clip-retrieval's metadata/*.parquet)")
    if sum(s.rows for s in shards) == 0:
        raise CollapseProbeError(f"{first.label}: no rows to read (every shard is empty)")
