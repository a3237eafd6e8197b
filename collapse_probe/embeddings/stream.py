"""Rows from disk into an accumulator under a memory budget, the reading overlapped with the arithmetic.

A reader thread reads chunk after chunk (:func:`plan_chunks` sizes them) into a small pool of
reused buffers and computes the row norms (:class:`~collapse_probe.embeddings.provenance.NormStats`);
the calling thread hands each chunk to ``accumulator.update`` in batches of ``update_rows`` (the
GEMM, which releases the GIL, so the next chunk is read meanwhile). At most
:data:`IN_FLIGHT` chunks exist at once (one being read, two queued, one being merged), and the
accumulator's own float64 row buffer holds ``update_rows + 1`` rows: together they stay within
the budget, so the peak resident memory is the budget plus the accumulator's d x d float64
matrices (and the solve's, at the end), whatever the input size.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from collapse_probe.embeddings.numpy_files import NpzReader
from collapse_probe.embeddings.parquet_files import ParquetReader
from collapse_probe.embeddings.provenance import NormStats
from collapse_probe.embeddings.sharding import Piece
from collapse_probe.embeddings.shards import RawReader, Reader, Shard, fed_dtype
from collapse_probe.errors import CollapseProbeError

#: Chunks alive at once: one being read, QUEUED waiting, one being merged.
QUEUED = 2
IN_FLIGHT = QUEUED + 2
#: The largest batch handed to ``update``: large enough for an efficient GEMM (docs/benchmarks.md).
MAX_UPDATE_ROWS = 8192
_DONE = object()


@dataclass(frozen=True)
class ChunkPlan:
    """``chunk_rows`` rows per read; ``update_rows`` rows per ``accumulator.update``."""

    chunk_rows: int
    update_rows: int


def plan_chunks(dim: int, shards: Sequence[Shard], budget: int) -> ChunkPlan:
    """Chunk sizes that keep the reading within ``budget`` bytes.

    A quarter of the budget is the accumulator's float64 batch buffer,
    ``(update_rows + 1) d 8`` bytes; the rest holds :data:`IN_FLIGHT` chunks of ``chunk_rows``
    rows, each row ``d (s (1 + scratch) + s')`` bytes for item size ``s``, the reader's scratch
    copies and ``s'`` the float item size integer codes are converted to (0 for floats).

    >>> plan_chunks(768, [], 256 * 10**6)
    ChunkPlan(chunk_rows=15625, update_rows=8192)
    """
    row_bytes = dim * 4  # the empty case: float32
    for shard in shards:
        size = torch.empty((), dtype=shard.dtype).element_size()
        fed = fed_dtype(shard.dtype)
        converted = 0 if fed == shard.dtype else torch.empty((), dtype=fed).element_size()
        row_bytes = max(row_bytes, dim * (size * (1 + shard.scratch) + converted))
    update_rows = min(MAX_UPDATE_ROWS, budget // 4 // (8 * dim) - 1)
    chunk_rows = (budget - budget // 4) // (IN_FLIGHT * row_bytes)
    if update_rows < 1 or chunk_rows < 1:
        raise CollapseProbeError(f"--memory-budget {budget} bytes cannot hold a few rows of width {dim}: "
                                 f"give at least {format_bytes(4 * 8 * dim * 64)}")
    return ChunkPlan(int(chunk_rows), int(min(update_rows, chunk_rows)))


def parse_bytes(text: str | int) -> int:
    """``"256MB"`` / ``"1.5GiB"`` / ``"512"`` (MB) -> bytes; KB, MB, GB are 10^3, KiB, MiB, GiB 2^10.

    >>> parse_bytes("256MB"), parse_bytes("1GiB"), parse_bytes("64")
    (256000000, 1073741824, 64000000)
    """
    if isinstance(text, int):
        return text
    units = {"": 10**6, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
             "kib": 2**10, "mib": 2**20, "gib": 2**30}
    value = str(text).strip().lower()
    number = value.rstrip("abgikm ")
    unit = value[len(number):].strip()
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or amount <= 0:
        raise CollapseProbeError(f"--memory-budget {text}: give a size such as 256MB, 2GB or 1GiB")
    return int(amount * units[unit])


def format_bytes(count: int) -> str:
    """``"1.0 MB"`` style (powers of 10)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def open_reader(shard: Shard, chunk_rows: int) -> Reader:
    """The reader of a shard's format (see :mod:`.shards`)."""
    if shard.kind == "npz":
        return NpzReader(shard)
    if shard.kind == "parquet":
        return ParquetReader(shard, chunk_rows)
    return RawReader(shard)


class BufferPool:
    """At most :data:`IN_FLIGHT` live ``(chunk_rows, dim)`` buffers, reused; ``take`` waits for one.

    Shards of another dtype get new buffers; the old ones are dropped as they come back, so the
    count of live buffers (the memory) never exceeds :data:`IN_FLIGHT`.
    """

    def __init__(self, rows: int, dim: int):
        self.rows, self.dim = rows, dim
        self.free: list[torch.Tensor] = []
        self.live = 0
        self.dtype: torch.dtype | None = None
        self.condition = threading.Condition()

    def take(self, dtype: torch.dtype, stop: threading.Event) -> torch.Tensor:
        with self.condition:
            if dtype != self.dtype:
                self.live -= len(self.free)
                self.free, self.dtype = [], dtype
            while not self.free and self.live >= IN_FLIGHT:
                if stop.is_set():
                    raise CollapseProbeError("reading stopped")
                self.condition.wait(timeout=0.5)
            if self.free:
                return self.free.pop()
            self.live += 1
            return torch.empty((self.rows, self.dim), dtype=dtype)

    def give(self, buffer: torch.Tensor | None) -> None:
        if buffer is None:
            return
        with self.condition:
            if buffer.dtype == self.dtype:
                self.free.append(buffer)
            else:
                self.live -= 1
            self.condition.notify()


def _put(channel: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            channel.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def _produce(shards: Sequence[Shard], read: Sequence[Piece], plan: ChunkPlan, pool: BufferPool,
             channel: queue.Queue, stop: threading.Event, norms: NormStats) -> None:
    """The reader thread: every chunk of ``read`` into ``channel``, then :data:`_DONE` (or the error)."""
    try:
        for piece in read:
            shard = shards[piece.shard]
            reader = open_reader(shard, plan.chunk_rows)
            try:
                for start in range(piece.start, piece.stop, plan.chunk_rows):
                    stop_row = min(start + plan.chunk_rows, piece.stop)
                    buffer = pool.take(shard.dtype, stop) if shard.kind != "parquet" else None
                    rows = reader.read(start, stop_row, buffer)
                    if not rows.is_floating_point():  # quantised codes: exact in the float fed_dtype names
                        rows = rows.to(fed_dtype(rows.dtype))
                    norms.update(rows)
                    _put(channel, (piece.shard, rows, buffer), stop)
                    if stop.is_set():
                        return
            finally:
                reader.close()
        _put(channel, _DONE, stop)
    except BaseException as error:  # noqa: BLE001 - handed to the main thread, raised there
        _put(channel, error, stop)


def stream_rows(shards: Sequence[Shard], read: Sequence[Piece], plan: ChunkPlan, accumulator: Any,
                norms: NormStats, *, progress: bool, label: str = "embeddings") -> None:
    """Feed rows ``read`` of ``shards`` to ``accumulator.update``, reading ahead on a thread.

    A tqdm bar on stderr counts rows and shards when ``progress``. Errors of the reader (a
    truncated file, a ragged parquet row) are raised here, in the caller's thread.
    """
    from tqdm.auto import tqdm

    total = sum(p.rows for p in read)
    channel: queue.Queue = queue.Queue(maxsize=QUEUED)
    stop = threading.Event()
    pool = BufferPool(plan.chunk_rows, shards[0].dim if shards else 1)
    thread = threading.Thread(target=_produce, args=(shards, read, plan, pool, channel, stop, norms),
                              name="collapse-probe-reader", daemon=True)
    bar = tqdm(total=total, desc=label, unit="row", unit_scale=True, file=sys.stderr, leave=False,
               disable=not progress)
    shard_order = sorted({p.shard for p in read})
    thread.start()
    try:
        while True:
            item = channel.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            shard, rows, buffer = item
            for batch in rows.split(plan.update_rows):
                accumulator.update(batch)
            pool.give(buffer)
            bar.set_postfix_str(f"shard {shard_order.index(shard) + 1}/{len(shard_order)}", refresh=False)
            bar.update(rows.shape[0])
    finally:
        stop.set()
        thread.join()
        bar.close()
