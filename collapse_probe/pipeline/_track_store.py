"""``track``'s memory: one result file per checkpoint, keyed by its content and the options.

Layout under ``OUT/track/``:

* ``results/<sha256[:20]>-<options[:12]>.json``: one checkpoint's spectra (format
  ``collapse-probe/track-result-v1``: the ``spectrum.json`` document, the load report's summary,
  the timings), written atomically the moment the checkpoint is done, so a killed run keeps
  every finished checkpoint and a rerun probes only new or changed ones;
* ``hashes.json``: path -> (size, mtime_ns, sha256), so an unchanged file is not hashed again.

The options key (:func:`options_key`) covers everything that changes the numbers: every
:class:`~collapse_probe.probe.options.ProbeOptions` field (a callable by its qualified name), the
data settings but the worker count, the data's identity (:func:`data_signature`), the
architecture, the load flags and the device type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from collapse_probe._utils.files import atomic_write_text
from collapse_probe.data.builtin import is_builtin
from collapse_probe.data.folders import list_images
from collapse_probe.data.text import is_text_data
from collapse_probe.errors import CollapseProbeError
from collapse_probe.pipeline.checkpoints import ProbeConfig
from collapse_probe.pipeline.outputs import ProbeResult, spectra_document
from collapse_probe.results.spectrum import Spectrum, json_safe

RESULT_FORMAT = "collapse-probe/track-result-v1"
KEY_VERSION = 1
#: Files of a Hugging Face Trainer folder that do not change the model (not hashed).
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")
_CHUNK = 1 << 22


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(path: Path) -> list[Path]:
    """The files whose content is the checkpoint: the file, or a folder's files but its trainer state."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in TRAINER_STATE_FILES
                  and not p.name.startswith("rng_state"))


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


class HashCache:
    """sha256 of checkpoint contents, remembered by (size, mtime_ns, inode) in ``hashes.json``."""

    def __init__(self, path: Path | None):
        self.path = path
        self.known: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                self.known = json.loads(path.read_text())
            except (OSError, ValueError):  # a damaged cache is only a cache: hash again
                self.known = {}

    def sha256(self, checkpoint: Path) -> str:
        """The content hash of a checkpoint file or folder (a folder: names and contents of its
        model files, :data:`TRAINER_STATE_FILES` left out)."""
        parts = []
        for file in _model_files(checkpoint):
            where = str(file.resolve())
            stat = _stat_key(file)
            entry = self.known.get(where)
            if entry is None or entry[0] != stat:
                entry = [stat, _file_sha256(file)]
                self.known[where] = entry
            parts.append(f"{file.relative_to(checkpoint) if checkpoint.is_dir() else ''}:{entry[1]}")
        if len(parts) == 1 and not checkpoint.is_dir():
            return parts[0].partition(":")[2]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.known))


def data_signature(data: str, max_samples: int | None) -> str:
    """What identifies the probed sample: a built-in set by name, a text file by size and mtime,
    a folder by the relative names, sizes and mtimes of the sampled files."""
    if is_builtin(data):
        return f"{data}|{max_samples}"
    if is_text_data(data):
        stat = os.stat(data)
        return f"{os.path.abspath(data)}|{stat.st_size}|{stat.st_mtime_ns}|{max_samples}"
    root = Path(data)
    digest = hashlib.sha256(str(root.resolve()).encode())
    for file in list_images(root, max_samples=max_samples):
        stat = file.stat()
        digest.update(f"\n{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def options_key(config: ProbeConfig, data_id: str, device_type: str) -> str:
    """sha256 of everything that changes a checkpoint's numbers besides its content (module doc)."""
    options = {f.name: _plain(getattr(config.options, f.name)) for f in dataclasses.fields(config.options)
               if f.name not in ("progress", "device")}
    data = {k: v for k, v in dataclasses.asdict(config.data).items() if k != "workers"}
    document = {"version": KEY_VERSION, "options": options, "data": data, "data_id": data_id,
                "arch": config.arch, "allow_partial": config.allow_partial,
                "trust_checkpoint": config.trust_checkpoint, "device": device_type}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=repr).encode()).hexdigest()


class ResultStore:
    """The finished checkpoints of one ``OUT`` folder (``OUT/track/results``); None: in memory only."""

    def __init__(self, out: Path | None):
        self.folder = None if out is None else out / "track" / "results"
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{sha[:20]}-{key[:12]}.json"

    def load(self, sha: str, key: str) -> dict[str, Any] | None:
        """The stored record of (checkpoint content, options), or None (never stored, or damaged)."""
        path = self._path(sha, key)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("format") != RESULT_FORMAT or record.get("sha256") != sha or record.get("options_key") != key:
            return None
        return record

    def save(self, sha: str, key: str, result: ProbeResult, extra: dict[str, Any]) -> dict[str, Any]:
        """Write one checkpoint's record atomically; returns it."""
        record = {"format": RESULT_FORMAT, "sha256": sha, "options_key": key,
                  "spectra": spectra_document(result), **extra}
        path = self._path(sha, key)
        if path is not None:
            atomic_write_text(path, json.dumps(json_safe(record)))
        return record


def result_of(record: dict[str, Any]) -> ProbeResult:
    """The :class:`ProbeResult` a stored record holds (its load report as the record's summary)."""
    document = record["spectra"]
    try:
        spectra = {name: Spectrum.from_dict(data) for name, data in document["layers"].items()}
    except (KeyError, TypeError) as error:
        raise CollapseProbeError(f"a stored track result is damaged ({error}); delete OUT/track/results") from None
    return ProbeResult(spectra, dict(document.get("roles", {})), dict(document.get("source", {})))
