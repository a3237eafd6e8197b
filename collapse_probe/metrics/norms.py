"""How token norms are spread, from a streamed histogram (never a stored list of norms).

Artifact tokens (Darcet et al., "Vision Transformers Need Registers", ICLR 2024) are a few tokens
whose norm is far above the rest; they can dominate a token spectrum. :class:`NormHistogram`
bins ``log10 ||z||`` on a fixed grid (``BINS_PER_DECADE`` bins per decade from 1e-12 to 1e12: a
quantile is exact to within one bin, a factor 10**(1/100) = 1.023), on the rows' device, and
sums under ``torch.distributed``; the largest norm is kept (to float32 precision).
"""

from __future__ import annotations

import math
from typing import Any

import torch

LOG10_LOW, LOG10_HIGH, BINS_PER_DECADE = -12.0, 12.0, 100
QUANTILES = (0.01, 0.5, 0.9, 0.99)
ARTIFACT_FACTOR = 10.0


class NormHistogram:
    """Streamed histogram of row norms: ``update`` per batch, ``sync``, then ``summary``."""

    def __init__(self, device: torch.device | str | None = None):
        bins = int((LOG10_HIGH - LOG10_LOW) * BINS_PER_DECADE)
        self.counts = torch.zeros(bins + 2, dtype=torch.float64, device=device)  # under, bins, over
        self.largest = torch.zeros((), dtype=torch.float64, device=device)

    @torch.inference_mode()
    def update(self, rows: torch.Tensor) -> None:
        """Add the norms of (R, D) rows (non-finite norms are not counted)."""
        # float32 norms are exact to 1e-7, far inside a bin: no float64 copy of the rows
        norms = torch.linalg.vector_norm(rows.float(), dim=1).double()
        if norms.numel() == 0:
            return
        finite = torch.isfinite(norms)  # weights, not a filter: no host sync per batch
        norms = torch.where(finite, norms, torch.zeros_like(norms))
        position = ((norms.clamp_min(1e-300).log10() - LOG10_LOW) * BINS_PER_DECADE).floor() + 1
        index = position.clamp(0, self.counts.numel() - 1).long()
        self.counts.index_add_(0, index, finite.double())
        self.largest = torch.maximum(self.largest, norms.max())

    def sync(self) -> None:
        """Sum the counts and take the largest norm over ``torch.distributed`` processes."""
        from collapse_probe._utils.ranks import is_distributed

        if is_distributed():
            import torch.distributed as dist

            dist.all_reduce(self.counts)
            dist.all_reduce(self.largest, op=dist.ReduceOp.MAX)

    def _edge(self, index: int) -> float:
        """The upper edge of bin ``index`` (1-based among the real bins)."""
        return 10.0 ** (LOG10_LOW + index / BINS_PER_DECADE)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the norms, to within one bin (the bin's upper edge, capped at the max)."""
        cumulative = self.counts.cumsum(0)
        total = float(cumulative[-1])
        if total == 0:
            return math.nan
        index = int(torch.searchsorted(cumulative, torch.tensor(q * total, dtype=torch.float64,
                                                                 device=cumulative.device)))
        return min(self._edge(index), float(self.largest))

    def summary(self) -> dict[str, Any]:
        """Quantiles of the norm, the largest, and how many rows exceed 10x the median.

        The count above ``10 x median`` is exact to within the bin that holds that threshold.
        """
        total = int(self.counts.sum())
        median = self.quantile(0.5)
        threshold = ARTIFACT_FACTOR * median
        first = int(math.ceil((math.log10(max(threshold, 1e-300)) - LOG10_LOW) * BINS_PER_DECADE)) + 1 \
            if math.isfinite(threshold) else self.counts.numel()
        above = int(self.counts[min(max(first, 0), self.counts.numel()):].sum())
        return {"n": total, "max": float(self.largest) if total else math.nan,
                **{f"q{int(q * 100):02d}": self.quantile(q) for q in QUANTILES},
                "n_above_10x_median": above, "fraction_above_10x_median": above / total if total else math.nan,
                "resolution": f"log10 bins of 1/{BINS_PER_DECADE} decade (quantiles within 2.3%)"}
