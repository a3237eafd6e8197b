"""Embeddings on disk: sharded files read in bounded memory, split over processes, merged from parts.

* :func:`embeddings_spectrum`: the spectrum of a file, folder, glob or list of ``.npy``, ``.npz``,
  ``.pt``, ``.safetensors`` or parquet shards (or the clip-retrieval layout);
* :func:`read_part` + :meth:`PartState.save`: one part's mergeable float64 state
  (``collapse-probe embeddings --save-state``);
* :func:`merge_states`: parts saved anywhere -> one spectrum (``collapse-probe merge``).

Modules, one job each: :mod:`.sources` (what to read, checked), :mod:`.shards` and the format
modules (:mod:`.numpy_files`, :mod:`.torch_files`, :mod:`.parquet_files`), :mod:`.sharding`
(which rows this process reads), :mod:`.stream` (reading under the memory budget),
:mod:`.provenance`, :mod:`.states`, :mod:`.merge`, :mod:`.pairing` (``compare``'s checks) and
:mod:`.api` (the pass itself).
"""

from __future__ import annotations

from collapse_probe.embeddings.api import (
           EmbeddingOptions,
           embeddings_spectrum,
           make_options,
           read_part,
           record_ids,
)
from collapse_probe.embeddings.merge import merge_states
from collapse_probe.embeddings.sources import ShardSet, resolve
from collapse_probe.embeddings.states import STATE_FORMAT, PartState, load_state

__all__ = ["STATE_FORMAT", "EmbeddingOptions", "PartState", "ShardSet", "embeddings_spectrum", "load_state",
           "make_options", "merge_states", "read_part", "record_ids", "resolve"]
