"""Which checkpoints ``track`` probes, in which order, and whether each one is completely written.

* :func:`expand_sources`: SOURCE... (a folder of checkpoints, a glob, a list of anything
  ``spectrum`` accepts) -> checkpoint paths, each once;
* :func:`recorded_step`: the step a checkpoint records (``global_step``, ``step``, ``epoch``...),
  or the number in its name, and where that came from;
* :func:`order_checkpoints`: one key for all (the first in :data:`STEP_KEYS` that every
  checkpoint records, else the number in the name, else the order given), sorted by it;
* :func:`signature`: size and modification time of a file (of every file of a folder), which a
  half-written checkpoint changes between two polls (``--watch``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.hf import is_hf_folder

#: Files a folder of checkpoints holds (Lightning .ckpt, torch .pt/.pth/.bin, safetensors, export).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pt2", ".tar")
#: What a checkpoint may record its progress as, most precise first.
STEP_KEYS = ("global_step", "step", "iteration", "iter", "num_updates", "epoch")
#: A Hugging Face Trainer folder's own record of its step.
TRAINER_STATE = "trainer_state.json"
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to probe: ``path``, its ``step`` and where the step came from (``origin``,
    e.g. ``"global_step in the file"``, ``"the number in the name"``, ``"position 3 given"``)."""

    path: Path
    step: float
    origin: str

    @property
    def name(self) -> str:
        return self.path.name


def is_checkpoint_path(path: Path) -> bool:
    """A file with a checkpoint suffix, or a Hugging Face ``save_pretrained`` folder."""
    if path.is_dir():
        return is_hf_folder(path)
    return path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.name.startswith(".")


def folder_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints directly inside ``folder`` (files by suffix, Hugging Face sub-folders such
    as the Trainer's ``checkpoint-500/``), and those of its ``checkpoints/`` sub-folder (the
    collapse-probe trainer's and Lightning's history); temporary files (``.name.tmp``) are not
    checkpoints."""
    found = sorted(p for p in folder.iterdir() if is_checkpoint_path(p))
    history = folder / "checkpoints"
    if history.is_dir() and not is_hf_folder(history):
        found += sorted(p for p in history.iterdir() if is_checkpoint_path(p))
    return found


def expand_sources(sources: Sequence[str | os.PathLike], *, allow_empty: bool = False) -> list[Path]:
    """SOURCE... -> checkpoint paths, in the order given, each once.

    A folder that is itself a Hugging Face folder is one checkpoint; any other folder gives the
    checkpoints inside it; a pattern with ``*``, ``?`` or ``[`` is a glob (``**`` recursive); any
    other path is taken as it is (a missing one is refused in one line). ``allow_empty`` (watch
    mode): a folder or glob with nothing in it yet is no error.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("epoch_2.pt", "epoch_10.pt", "notes.txt"):
    ...     _ = (root / name).write_bytes(b"x")
    >>> [p.name for p in expand_sources([root])]
    ['epoch_10.pt', 'epoch_2.pt']
    """
    found: list[Path] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if _GLOB.search(text) and not path.exists():
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            paths = [m for m in matches if is_checkpoint_path(m)]
            if not paths and not allow_empty:
                raise CollapseProbeError(f"{text}: the pattern matches no checkpoint")
        elif path.is_dir() and not is_hf_folder(path):
            paths = folder_checkpoints(path)
            if not paths and not allow_empty:
                raise CollapseProbeError(f"{text}: no checkpoints in that folder ({', '.join(CHECKPOINT_SUFFIXES)} "
                                         "files, or Hugging Face checkpoint-N/ folders)")
        elif path.exists():
            paths = [path]
        else:
            raise CollapseProbeError(f"checkpoint {text!r} does not exist")
        found.extend(p for p in paths if p not in found)
    return found


def name_number(path: Path) -> int | None:
    """The last number in a checkpoint's name (its stem), or None.

    >>> name_number(Path("epoch_0007.pt")), name_number(Path("checkpoint-500")), name_number(Path("last.ckpt"))
    (7, 500, None)
    """
    numbers = re.findall(r"\d+", path.stem if path.is_file() else path.name)
    return int(numbers[-1]) if numbers else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "numel") and value.numel() == 1:  # a 0-d tensor
        return float(value.item())
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        return float(value)
    return None


def _steps_in_mapping(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    found = {key: _number(obj.get(key)) for key in STEP_KEYS}
    return {key: value for key, value in found.items() if value is not None}


def _file_steps(path: Path) -> dict[str, float] | None:
    """The step keys a checkpoint file records, read without building a model (None: unreadable)."""
    import torch

    if path.suffix == ".safetensors":
        try:
            with open(path, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(min(length, 1 << 26)))
        except (OSError, ValueError):
            return None
        return _steps_in_mapping(header.get("__metadata__") or {})
    if path.suffix == ".pt2":
        return {}
    try:
        zipped = zipfile.is_zipfile(path)
        if zipped and any(n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist()):
            return {}  # TorchScript: nothing recorded beside the module
        # mmap: the tensors are not read, only the pickle that names them
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception:  # noqa: BLE001 - unreadable here is reported when it is loaded
        return None
    return _steps_in_mapping(obj)


def recorded_steps(path: Path) -> dict[str, float] | None:
    """Every step key a checkpoint records: its top-level keys in :data:`STEP_KEYS` (a file), or
    a Hugging Face Trainer folder's ``trainer_state.json`` (``global_step``, ``epoch``); None for
    a file that cannot be read (it fails when loaded, and is reported then)."""
    if path.is_dir():
        state = path / TRAINER_STATE
        try:
            return _steps_in_mapping(json.loads(state.read_text())) if state.is_file() else {}
        except (OSError, ValueError):
            return {}
    return _file_steps(path)


def order_checkpoints(paths: Iterable[Path], steps: dict[Path, dict[str, float] | None] | None = None
                      ) -> list[Checkpoint]:
    """The checkpoints sorted by one step for all: the first key of :data:`STEP_KEYS` that every
    readable checkpoint records, else the number in every name, else the order given (ties: by
    name). A file that cannot be read at all (it will fail to load and be reported) does not
    decide the others' step: it takes the number in its name when that is the scale, else no
    step (NaN, listed last).

    ``steps``: :func:`recorded_steps` of each path, when already read.
    """
    paths = list(paths)
    if steps is None:
        steps = {p: recorded_steps(p) for p in paths}
    readable = [p for p in paths if steps.get(p) is not None]
    by_name = False
    for key in STEP_KEYS:
        if readable and all(key in steps[p] for p in readable):
            chosen = [Checkpoint(p, steps[p][key], f"{key} in the {'folder' if p.is_dir() else 'file'}")
                      for p in readable]
            break
    else:
        numbers = {p: name_number(p) for p in readable}
        by_name = all(n is not None for n in numbers.values())
        if by_name:
            chosen = [Checkpoint(p, float(numbers[p]), "the number in the name") for p in readable]
        else:
            chosen = [Checkpoint(p, float(i), f"position {i} given (no step recorded, no number in every name)")
                      for i, p in enumerate(readable)]
    for p in paths:
        if steps.get(p) is None:  # on the others' scale only when that scale is the names'
            number = name_number(p) if by_name or not readable else None
            chosen.append(Checkpoint(p, math.nan if number is None else float(number),
                                     "unreadable" + (": the number in the name" if number is not None else "")))
    # equal steps: a name with a number first (epoch_0020.pt before its copy checkpoint.pt)
    return sorted(chosen, key=lambda c: (math.isnan(c.step), 0.0 if math.isnan(c.step) else c.step,
                                         name_number(c.path) is None, c.name))


def signature(path: Path) -> tuple:
    """``(size, mtime_ns)`` of a file, or of every file of a folder (by relative name); () if gone."""
    try:
        if path.is_dir():
            return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                                for p in path.rglob("*") if p.is_file()))
        stat = path.stat()
    except OSError:
        return ()
    return (stat.st_size, stat.st_mtime_ns)
