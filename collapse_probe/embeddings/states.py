"""A part's mergeable state: the float64 moments of the rows it read, with where they came from.

The state file (``--save-state FILE``, format :data:`STATE_FORMAT`) is a ``torch.save`` dict,
readable with ``weights_only=True``::

    {"format": "collapse-probe/embeddings-state-v1",
     "accumulator": CovarianceAccumulator.state_dict(),   # count, mean, M2 (d x d float64), ...
     "provenance": {...}}                                  # shards, rows read, options, dtype

It holds O(d^2) numbers whatever the rows (32 MB at d = 2048). Parts made from disjoint rows with
the same options combine exactly by the parallel (Chan) merge (:mod:`.merge`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from collapse_probe._utils.files import atomic_path
from collapse_probe.embeddings.sharding import Piece
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.results.spectrum import Spectrum

STATE_FORMAT = "collapse-probe/embeddings-state-v1"


@dataclass
class PartState:
    """The accumulated rows of one part (every rank's, once synced) and their provenance record.

    ``shards`` and ``part_pieces`` (the part's rows, every rank's) are kept for the id pass; they
    are not saved.
    """

    accumulator: CovarianceAccumulator | GroupedAccumulator
    provenance: dict[str, Any]
    shards: tuple[Any, ...] = ()
    part_pieces: list[Piece] = field(default_factory=list)

    def spectrum(self) -> Spectrum:
        """The spectrum of these rows, ``extra["embeddings"]`` holding the provenance."""
        return with_provenance(self.accumulator.compute(), self.provenance)

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`save` writes (a local, mergeable accumulator state)."""
        if isinstance(self.accumulator, GroupedAccumulator):
            raise CollapseProbeError("--save-state saves one part's moments; with --groups K there are K: save "
                                     "the parts without --groups and merge them with `collapse-probe merge --jackknife`")
        state = self.accumulator.state_dict()
        # after a torchrun sync the moments are every rank's rows: as a file they are one part,
        # local to whoever merges it
        state["synced"] = False
        return {"format": STATE_FORMAT, "accumulator": state, "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` atomically to ``path`` (``torch.save``); returns the path."""
        document = self.state_dict()
        with atomic_path(path) as temporary:
            torch.save(document, temporary)
        return Path(path)


def with_provenance(spectrum: Spectrum, provenance: dict[str, Any]) -> Spectrum:
    """``spectrum`` with ``extra["embeddings"] = provenance`` (other extras kept)."""
    return dataclasses.replace(spectrum, extra={**spectrum.extra, "embeddings": provenance})


def load_state(path: str | Path) -> dict[str, Any]:
    """A saved part state, checked for its format; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CollapseProbeError(f"state file not found: {path}")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is bad input
        raise CollapseProbeError(f"{path}: not a collapse-probe state file ({type(error).__name__})") from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise CollapseProbeError(f"{path}: not a {STATE_FORMAT} file (found {found!r}); write one with "
                                 "`collapse-probe embeddings ... --save-state FILE`")
    return document


def accumulator_of(document: dict[str, Any]) -> CovarianceAccumulator:
    """A fresh accumulator holding a loaded state's moments."""
    saved = document["accumulator"]
    accumulator = CovarianceAccumulator(int(saved["dim"]), center=bool(saved["center"]), ddof=int(saved["ddof"]),
                                        normalize=bool(saved["normalize"]), layer=saved.get("layer"),
                                        skip_nonfinite=bool(document["provenance"]["options"]["skip_nonfinite"]))
    accumulator.load_state_dict(saved)
    return accumulator
