"""Which rows this process reads: a part of the whole (``--part I/K``), then a rank's share of it.

The shards are one sequence of rows ``0 .. N - 1`` in their printed order. Part ``i`` of ``K``
holds rows ``[i N // K, (i + 1) N // K)``; under ``torchrun`` rank ``r`` of ``W`` holds the same
split of its part. Splitting by rows, not by files, keeps the shares within one row of equal
whatever the shard sizes, and splits one huge file too. The split is arithmetic on the row
counts every process reads from the headers: no coordination is needed to agree on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from collapse_probe._utils.ranks import is_distributed, rank, world_size
from collapse_probe.errors import CollapseProbeError


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of shard number ``shard``."""

    shard: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def split(start: int, stop: int, index: int, count: int) -> tuple[int, int]:
    """Share ``index`` of ``count`` of the rows ``[start, stop)``: contiguous, sizes within one.

    >>> [split(0, 10, i, 3) for i in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    total = stop - start
    return start + total * index // count, start + total * (index + 1) // count


def pieces(shard_rows: list[int], start: int, stop: int) -> list[Piece]:
    """The global rows ``[start, stop)`` as per-shard pieces, in shard order (empty pieces dropped).

    >>> pieces([4, 0, 5], 2, 7)
    [Piece(shard=0, start=2, stop=4), Piece(shard=2, start=0, stop=3)]
    """
    found, offset = [], 0
    for index, rows in enumerate(shard_rows):
        lo, hi = max(start, offset), min(stop, offset + rows)
        if hi > lo:
            found.append(Piece(index, lo - offset, hi - offset))
        offset += rows
    return found


def parse_part(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/K"`` (0 <= I < K) -> ``(I, K)``; ``None`` -> ``(0, 1)``, the whole.

    >>> parse_part("3/8"), parse_part(None)
    ((3, 8), (0, 1))
    """
    if text is None:
        return 0, 1
    if isinstance(text, tuple):
        index, count = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise CollapseProbeError(f"--part {text}: give I/K, part I (from 0) of K, e.g. --part 0/4")
        index, count = int(match.group(1)), int(match.group(2))
    if not 0 <= index < count:
        raise CollapseProbeError(f"--part {index}/{count}: I must be in 0 .. K - 1")
    return int(index), int(count)


def join_torchrun(device: torch.device) -> tuple[int, int]:
    """``(rank, world size)``, joining the ``torchrun`` job first if the environment names one
    (``WORLD_SIZE`` > 1) and no process group is set up yet: gloo for CPU statistics, NCCL on CUDA."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank(), world_size()


def my_rows(total: int, part: tuple[int, int], ranks: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(the part's rows, this rank's rows)`` of ``total`` rows, as ``[start, stop)`` pairs.

    >>> my_rows(10, (1, 2), (0, 2))
    ((5, 10), (5, 7))
    """
    part_rows = split(0, total, *part)
    return part_rows, split(*part_rows, *ranks)
