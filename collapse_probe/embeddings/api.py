"""The one pass over embeddings on disk: options, this process's rows, the sync, the provenance.

:func:`read_part` is what ``collapse-probe embeddings`` runs and what :func:`embeddings_spectrum`
wraps: resolve the shards (headers only, every check first), pick this process's rows (part,
then rank), stream them into a float64 accumulator under the memory budget, all-reduce the
moments under ``torchrun``, and record the provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from collapse_probe._utils.devices import parse_device
from collapse_probe.embeddings.provenance import (
    FINGERPRINT,
    PROVENANCE_FORMAT,
    NormStats,
    dtype_summary,
    fingerprint,
    hash_ids,
    shard_records,
)
from collapse_probe.embeddings.sharding import join_torchrun, my_rows, parse_part, pieces
from collapse_probe.embeddings.sources import ShardSet, resolve
from collapse_probe.embeddings.states import PartState
from collapse_probe.embeddings.stream import parse_bytes, plan_chunks, stream_rows
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.results.spectrum import Spectrum

DEFAULT_BUDGET = 256 * 10**6


@dataclass(frozen=True)
class EmbeddingOptions:
    """How embeddings on disk are read and measured (every field a CLI flag of the same name).

    ``key``: the tensor / ``.npz`` member (or clip-retrieval's ``img_emb`` / ``text_emb``);
    ``column``: the parquet embedding column, or a glob of one column per dimension;
    ``id_column``: the parquet column of row ids; ``quantised``: integer data are embeddings;
    ``center`` / ``normalize`` / ``skip_nonfinite`` / ``groups``: as for every spectrum;
    ``memory_budget``: bytes for rows in flight; ``part``: ``(I, K)``, this job's share;
    ``device``: where the moments live; ``name``: the spectrum's label; ``progress``: a tqdm bar.
    """

    key: str | None = None
    column: str | None = None
    id_column: str | None = None
    quantised: bool = False
    center: bool = True
    normalize: bool = False
    skip_nonfinite: bool = False
    groups: int | None = None
    memory_budget: int = DEFAULT_BUDGET
    part: tuple[int, int] = (0, 1)
    device: str = "cpu"
    name: str | None = None
    progress: bool = True


def make_options(**values: Any) -> EmbeddingOptions:
    """:class:`EmbeddingOptions` from keywords, the budget and part parsed (``"256MB"``, ``"0/4"``)."""
    known = set(EmbeddingOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise CollapseProbeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "memory_budget" in values:
        values["memory_budget"] = parse_bytes(values["memory_budget"])
    if "part" in values:
        values["part"] = parse_part(values["part"])
    return EmbeddingOptions(**values)


def default_name(sources: Sequence[str]) -> str:
    """A label: the file name without extension, the folder's name, or ``embeddings``."""
    if len(sources) != 1 or any(c in sources[0] for c in "*?["):
        return "embeddings"
    path = Path(sources[0])
    return path.name if path.is_dir() else path.stem


def _accumulator(dim: int, options: EmbeddingOptions, device: torch.device, name: str) -> Any:
    conventions = dict(device=device, center=options.center, normalize=options.normalize, layer=name,
                       skip_nonfinite=options.skip_nonfinite)
    if options.groups is not None:
        return GroupedAccumulator(dim, groups=options.groups, **conventions)
    return CovarianceAccumulator(dim, **conventions)


def _gather(fingerprints: dict[int, str], norms: NormStats, world: int) -> tuple[dict[int, str], NormStats]:
    """Every rank's fingerprints and norm statistics (one all_gather_object)."""
    if world == 1:
        return fingerprints, norms
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (fingerprints, norms))
    merged, total = {}, NormStats()
    for theirs, their_norms in gathered:
        merged |= theirs
        total = total.merge(their_norms)
    return merged, total


def read_part(sources: str | Path | Sequence[str | Path] | ShardSet, options: EmbeddingOptions,
              announce: Callable[[ShardSet], None] | None = None) -> PartState:
    """Stream this process's rows of ``sources`` into an accumulator; synced under ``torchrun``.

    Every header is read and checked before the first row; the rows read are part
    ``options.part`` of the whole, split again across ranks. ``announce(shards)`` is called once
    every check has passed, just before the first row is read (the CLI prints the order there).
    """
    shardset = sources if isinstance(sources, ShardSet) else resolve(
        sources, key=options.key, column=options.column, id_column=options.id_column, quantised=options.quantised)
    device = parse_device(options.device)
    rank, world = join_torchrun(device)
    rows = [s.rows for s in shardset.shards]
    part_rows, mine = my_rows(sum(rows), options.part, (rank, world))
    part_pieces, my_pieces = pieces(rows, *part_rows), pieces(rows, *mine)
    if not part_pieces:
        raise CollapseProbeError(f"--part {options.part[0]}/{options.part[1]} of {sum(rows)} rows holds no rows")
    name = options.name or default_name(list(shardset.sources))
    accumulator = _accumulator(shardset.dim, options, device, name)
    plan = plan_chunks(shardset.dim, shardset.shards, options.memory_budget)
    if options.groups is not None:  # batch i -> group i mod K: at least 4 batches per group where the rows allow
        mine_rows = mine[1] - mine[0]
        plan = replace(plan, update_rows=max(1, min(plan.update_rows, mine_rows // (4 * options.groups))))
    norms = NormStats()
    if announce is not None and rank == 0:
        announce(shardset)
    stream_rows(shardset.shards, my_pieces, plan, accumulator, norms, progress=options.progress and rank == 0,
                label=name if world == 1 else f"{name} (rank 0 of {world})")
    fingerprints = {p.shard: fingerprint(shardset.shards[p.shard]) for p in my_pieces}
    if world > 1:
        accumulator.sync()
    fingerprints, norms = _gather(fingerprints, norms, world)
    provenance = _provenance(shardset, part_pieces, fingerprints, norms, options, world)
    return PartState(accumulator, provenance, shardset.shards, part_pieces)


def _provenance(shardset: ShardSet, part_pieces: list[Any], fingerprints: dict[int, str], norms: NormStats,
                options: EmbeddingOptions, world: int) -> dict[str, Any]:
    records = shard_records(shardset.shards, part_pieces, fingerprints)
    kept = {k: v for k, v in asdict(options).items() if k not in ("progress", "device", "memory_budget", "name")}
    return {"format": PROVENANCE_FORMAT, "sources": list(shardset.sources), "layout": shardset.layout,
            "shards": records, "n_shards": len(records), "rows": sum(p.rows for p in part_pieces),
            "total_rows": shardset.rows, "dim": shardset.dim, "dtype": dtype_summary(records),
            "fingerprint_method": FINGERPRINT, "norms": norms.to_dict(),
            "options": kept | {"part": list(options.part), "ddof": 1 if options.center else 0},
            "world_size": world, "memory_budget": options.memory_budget, "ids": None,
            "quantised_note": ("integer codes read as numbers: the spectrum is that of the codes, no de-quantisation "
                               "scale applied") if options.quantised else None}


def record_ids(state: PartState, column: str, out: Path | None = None) -> dict[str, Any]:
    """Hash (and write to ``out``, one JSON value per line) the ids of the part's rows; recorded in
    ``state.provenance["ids"]``. Run by one process: the ids are a column, cheap beside the rows."""
    state.provenance["ids"] = hash_ids(state.shards, state.part_pieces, column, out)
    return state.provenance["ids"]


def embeddings_spectrum(sources: str | Path | Sequence[str | Path], *, ids_file: str | Path | None = None,
                        **options: Any) -> Spectrum:
    """The covariance spectrum of embeddings on disk, read in bounded memory.

    ``sources``: a file, folder, glob or list of them (``.npy``, ``.npz``, ``.pt``,
    ``.safetensors``, parquet, the clip-retrieval layout); ``options``: the fields of
    :class:`EmbeddingOptions` (``memory_budget="256MB"``, ``part="0/4"``, ...). The provenance
    (shards, rows, fingerprints, dtype, unit norms, ids' hash) is ``extra["embeddings"]``;
    ``ids_file``: also write the ids there, one JSON value per line.
    Under ``torchrun`` each rank reads its share and every rank returns the same spectrum.

    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> z = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    >>> np.save(folder / "e_0.npy", z[:100]); np.save(folder / "e_1.npy", z[100:])
    >>> s = embeddings_spectrum(folder, progress=False)
    >>> s.n_samples, s.extra["embeddings"]["n_shards"], s.extra["embeddings"]["dtype"]
    (300, 2, 'float32')
    >>> bool(np.allclose(s.eigenvalues.numpy(), np.linalg.eigvalsh(np.cov(z.astype(np.float64), rowvar=False))[::-1]))
    True
    """
    chosen = make_options(**options)
    state = read_part(sources, chosen)
    if chosen.id_column is not None:
        record_ids(state, chosen.id_column, None if ids_file is None else Path(ids_file))
    return state.spectrum()
