"""Class-aware accumulators: per-class covariances (K d^2) and within/between-class scatter (d^2 + K d).

:class:`ClassAccumulator` streams one layer's rows with their labels into

* the pooled :class:`~collapse_probe.metrics.covariance.CovarianceAccumulator` (the ordinary
  spectrum, unchanged);
* with ``per_class``: one covariance accumulator per class, made as its label first appears,
  under a memory budget (refused in one line, with the figure, never an out-of-memory crash);
* with ``scatter``: per-class counts n_k and float64 sums s_k (K x d). With the pooled centred
  scatter T = sum_i (z_i - mu)(z_i - mu)^T (Chan-merged, float64), the between-class scatter is
  B = sum_k n_k (mu_k - mu)(mu_k - mu)^T and the within-class scatter W = T - B (the exact
  decomposition of the total scatter), so ImageNet's 1,000 classes at d = 2048 need one d x d
  matrix and a 1,000 x 2048 table, not 1,000 covariances (33 GB).

Reading the labels present in a batch costs one host sync per batch (their set decides which
accumulators run); the pooled path without labels has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from collapse_probe._utils.ranks import is_distributed
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.results.classes import class_scatter

DEFAULT_CLASS_BUDGET = 4 * 2**30  # bytes of per-class state before a per-class run is refused


def per_class_bytes(dim: int) -> int:
    """State of one class: its d x d float64 M2 and the working copy its solve makes (2 x 8 d^2)."""
    return 16 * dim * dim


def check_class_budget(dim: int, n_classes: int, budget: int) -> None:
    """Refuse, naming the figure and how to cap it, per-class state that would exceed ``budget``."""
    needed = n_classes * per_class_bytes(dim)
    if needed > budget:
        raise CollapseProbeError(
            f"per-class spectra of {n_classes} classes at d = {dim} need {needed / 2**30:.1f} GiB "
            f"(16 d^2 bytes per class), over the budget of {budget / 2**30:.1f} GiB: probe a class subset "
            "(classes=[...], CLI --classes), fewer classes, raise class_memory_budget (--class-memory-budget), "
            "or use the within/between statistics (class_scatter, O(d^2 + K d))")


class ClassAccumulator:
    """Pooled, per-class and within/between statistics of one layer, updated with (rows, labels)."""

    def __init__(self, dim: int, make: Callable[[str | None], CovarianceAccumulator], *, per_class: bool,
                 scatter: bool, classes: Sequence[int] | None = None, budget: int = DEFAULT_CLASS_BUDGET,
                 expected_classes: int | None = None):
        self.dim, self.make, self.per_class, self.scatter = int(dim), make, per_class, scatter
        self.pooled = make(None)
        self.device, self.normalize = self.pooled.device, self.pooled.normalize
        self.skip_nonfinite = self.pooled.skip_nonfinite
        self.classes = None if classes is None else {int(c) for c in classes}
        self.budget = int(budget)
        self.by_class: dict[int, CovarianceAccumulator] = {}
        self.counts = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.sums = torch.zeros(0, self.dim, dtype=torch.float64, device=self.device)
        if per_class:
            known = len(self.classes) if self.classes is not None else expected_classes
            if known:
                check_class_budget(self.dim, known, self.budget)  # before any batch, when K is known

    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Add (R, d) rows with their (R,) integer labels (rows outside ``classes`` count in the pooled
        statistics only)."""
        labels = labels.to(self.device).long().reshape(-1)
        if labels.shape[0] != z.shape[0]:
            raise CollapseProbeError(f"{labels.shape[0]} labels for {z.shape[0]} rows")
        self.pooled.update(z)
        present = sorted(int(k) for k in labels.unique().tolist())  # the one host sync per batch
        if min(present, default=0) < 0:
            raise CollapseProbeError(f"class labels must be non-negative integers, got {min(present)}")
        kept = [k for k in present if self.classes is None or k in self.classes]
        if self.scatter:
            self._add_sums(z, labels)
        if self.per_class:
            for k in kept:
                self._class(k).update(z[labels == k])

    def _class(self, label: int) -> CovarianceAccumulator:
        if label not in self.by_class:
            check_class_budget(self.dim, len(self.by_class) + 1, self.budget)
            self.by_class[label] = self.make(str(label))
        return self.by_class[label]

    def _add_sums(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        rows = z.detach().to(self.device, torch.float64)
        if self.normalize:
            rows = F.normalize(rows, dim=1)  # the rows the pooled accumulator sees
        finite = torch.isfinite(rows).all(dim=1)
        rows = torch.where(finite.unsqueeze(1), rows, torch.zeros_like(rows))
        needed = int(labels.max()) + 1 if labels.numel() else 0
        self._grow(needed)
        self.counts.index_add_(0, labels, finite.double())
        self.sums.index_add_(0, labels, rows)

    def _grow(self, size: int, exact: bool = False) -> None:
        if size > self.counts.shape[0]:
            grown = size if exact else max(size, 2 * self.counts.shape[0])
            counts = torch.zeros(grown, dtype=torch.float64, device=self.device)
            sums = torch.zeros(grown, self.dim, dtype=torch.float64, device=self.device)
            counts[: self.counts.shape[0]] = self.counts
            sums[: self.sums.shape[0]] = self.sums
            self.counts, self.sums = counts, sums

    def sync(self) -> None:
        """All-reduce everything over ``torch.distributed``: ranks first agree on the classes seen and
        the size of the sums table, so every rank joins the same all-reduces."""
        self.pooled.sync()
        if not is_distributed():
            for accumulator in self.by_class.values():
                accumulator.sync()
            return
        import torch.distributed as dist

        size = torch.tensor([self.counts.shape[0]], device=self.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        self._grow(int(size), exact=True)  # every rank the same table size for the all-reduce
        if self.scatter:
            dist.all_reduce(self.counts)
            dist.all_reduce(self.sums)
        if self.per_class:
            seen: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(seen, sorted(self.by_class))
            for label in sorted({k for labels in seen for k in labels}):
                self._class(label).sync()

    def compute(self) -> dict[str, Any]:
        """``{"pooled": Spectrum, "classes": {label: Spectrum}, "scatter": ClassScatter | None}``."""
        pooled = self.pooled.compute()
        classes = {str(k): self.by_class[k].compute() for k in sorted(self.by_class)}
        scatter = None
        if self.scatter:
            moments = self.pooled.finalize()
            scatter = class_scatter(moments, self.counts, self.sums)
        return {"pooled": pooled, "classes": classes, "scatter": scatter}
