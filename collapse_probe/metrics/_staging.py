"""Rows on their way into the moments: the reused row buffer, CPU staging, the NaN/Inf checks.

On a CPU small batches are *staged* in one buffer and merged ``stage_capacity`` rows at a time:
one Chan update and one larger GEMM instead of one per batch (docs/benchmarks.md). The same
buffer holds a large batch for its direct merge; the spare row after the data carries the Chan
correction through the same GEMM (:func:`~collapse_probe.metrics._rank_update.merge_rows_`).

Every check leaves its answer on the device (no host sync per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stage_capacity(dim: int) -> int:
    """Rows staged before one merge on a CPU: 4 MiB of float64 rows, 256 to 4096 of them.

    1024 at d = 512, where staging makes the update 1.4x faster (as fast as 4096 rows, measured);
    256 at d = 2048, where the GEMM dominates and staging neither gains nor costs
    (docs/benchmarks.md). Small, so it adds little to the streaming path's peak memory.

    >>> stage_capacity(512), stage_capacity(2048), stage_capacity(16)
    (1024, 256, 4096)
    """
    return int(min(4096, max(256, 2**19 // dim)))


def can_check_by_sum(input_dtype: torch.dtype, rows: int, dtype: torch.dtype) -> bool:
    """Whether a non-finite column sum (in ``dtype``) proves a NaN/Inf among ``rows`` rows of ``input_dtype``.

    A NaN/Inf anywhere makes its column's sum non-finite, so the d sums (needed for the mean
    anyway) replace a B x d boolean pass -- but only when finite inputs cannot overflow the
    sum (float32 and narrower into float64). Otherwise (float64 input) each value is checked,
    so a finite input near the dtype's maximum is never reported as NaN/Inf.
    """
    return torch.finfo(input_dtype).max * rows < torch.finfo(dtype).max


def nonfinite_flag(values: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """On-device flag: does this (B, d) batch hold a NaN/Inf? (see :func:`can_check_by_sum`)."""
    if can_check_by_sum(input_dtype, values.shape[0], values.dtype):
        return ~torch.isfinite(values.sum(dim=0)).all()
    return ~torch.isfinite(values).all()


def drop_nonfinite_rows_(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero the (B, d) rows holding a NaN/Inf, in place; returns ``(weights (B, 1), kept, dropped)``.

    ``weights`` is 1 for a kept row and 0 for a dropped one; ``kept`` (float) and ``dropped``
    (int64) are on-device counts.
    """
    finite_rows = torch.isfinite(values).all(dim=1)
    dropped = (~finite_rows).sum()
    weights = finite_rows.to(values.dtype)[:, None]
    values.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).mul_(weights)
    return weights, weights.sum(), dropped


class RowStage:
    """The row buffer of one accumulator, and the rows staged in it (not accumulator state).

    ``staged`` rows wait in ``buffer[:staged]`` with their column sums ``staged_sum``; they are
    in no moment until :meth:`take` hands them over. Reusing one buffer also saves a fresh
    multi-MB allocation (and its page faults) per batch.
    """

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device):
        self.dim = dim
        self.dtype = dtype
        self.device = device
        self.buffer: torch.Tensor | None = None
        self.staged = 0
        self.staged_sum: torch.Tensor | None = None

    def rows(self, count: int) -> torch.Tensor:
        """The buffer, grown to at least ``count + 1`` rows (keeping what is staged)."""
        buffer = self.buffer
        if buffer is None or buffer.shape[0] < count + 1:
            grown = torch.empty(count + 1, self.dim, dtype=self.dtype, device=self.device)
            if buffer is not None and self.staged:
                grown[: self.staged].copy_(buffer[: self.staged])
            self.buffer = buffer = grown
        return buffer

    def stage(self, z: torch.Tensor, capacity: int, *, normalize: bool) -> torch.Tensor:
        """Copy the (B, d) batch after the staged rows (L2-normalised if asked); returns its NaN/Inf flag.

        The caller makes room first: ``staged + B <= capacity``.
        """
        count = z.shape[0]
        block = self.rows(capacity)[self.staged : self.staged + count]
        block.copy_(z.detach())
        if normalize:  # a NaN/Inf row stays non-finite through the normalisation
            block.copy_(F.normalize(block, dim=1))
        column_sums = block.sum(dim=0)  # one pass: the finiteness flag and, at the flush, the mean
        if can_check_by_sum(z.dtype, count, self.dtype):
            bad = ~torch.isfinite(column_sums).all()
        else:
            bad = ~torch.isfinite(block).all()
        self.staged_sum = column_sums if self.staged == 0 else self.staged_sum + column_sums
        self.staged += count
        return bad

    def take(self) -> tuple[torch.Tensor, int, torch.Tensor] | None:
        """Hand over the staged rows: ``(rows (staged + 1, d) with a spare last row, staged, column sums)``.

        ``None`` when nothing is staged. The stage is empty afterwards; the rows stay valid until
        the next :meth:`stage` or :meth:`rows`.
        """
        if not self.staged:
            return None
        count, column_sums = self.staged, self.staged_sum
        rows = self.rows(count)[: count + 1]
        self.staged = 0
        return rows, count, column_sums

    def clear(self) -> None:
        """Forget the staged rows (their statistics are replaced wholesale)."""
        self.staged = 0

    def free(self) -> None:
        """Release the buffer (before a solve, which then holds at most three d x d matrices)."""
        self.buffer = None
