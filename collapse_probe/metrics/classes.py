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

Reading the labels of a batch costs a host sync or two per batch (the classes present decide
which accumulators run); the pooled path without labels has none. With every class's own
accumulator, the pooled statistics are their Chan merge and the class sums their means, so rows
are folded once.
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

FLUSH_ROWS, HELD_ROWS = 4096, 65536  # rows per class update; rows held over all classes at most
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
        self.pending: dict[int, list[torch.Tensor]] = {}  # each class's rows not yet folded in
        self.pending_rows: dict[int, int] = {}
        self._held = 0  # rows held over all classes (the sum of pending_rows)
        self._folded = False
        self.counts = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.sums = torch.zeros(0, self.dim, dtype=torch.float64, device=self.device)
        if per_class:
            known = len(self.classes) if self.classes is not None else expected_classes
            if known:
                check_class_budget(self.dim, known, self.budget)  # before any batch, when K is known

    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Add (R, d) rows with their (R,) integer labels (rows outside ``classes`` count in the pooled
        statistics only)."""
        if self._folded:
            raise CollapseProbeError("this ClassAccumulator was synced or computed: make a new one for more rows")
        labels = labels.to(self.device).long().reshape(-1)
        if labels.shape[0] != z.shape[0]:
            raise CollapseProbeError(f"{labels.shape[0]} labels for {z.shape[0]} rows")
        if labels.numel() == 0:
            return
        if int(labels.min()) < 0:  # one of the host syncs a labelled batch costs
            raise CollapseProbeError(f"class labels must be non-negative integers, got {int(labels.min())}")
        if self.per_class:
            self._update_classes(z, labels)
        else:
            self.pooled.update(z)
        if self.scatter and self._sums_needed:
            self._add_sums(z, labels)

    @property
    def _sums_needed(self) -> bool:
        """Class sums are streamed unless every class has its own accumulator (then they are its means)."""
        return not (self.per_class and self.classes is None)

    def _update_classes(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Rows sorted by label once, then each class's run to its accumulator; the pooled
        statistics are the Chan merge of the classes at the end (no second pass over the rows)."""
        order = labels.argsort(stable=True)
        sizes = torch.bincount(labels).tolist()
        runs = torch.split(z.index_select(0, order.to(z.device)), sizes)
        for label, run in enumerate(runs):
            if run.shape[0] == 0:
                continue
            if self.classes is None or label in self.classes:
                self._class(label)
                self._hold(label, run)
            else:
                self.pooled.update(run)  # a class without a spectrum of its own: pooled only

    def _hold(self, label: int, run: torch.Tensor) -> None:
        """Gather a class's rows into updates of ``FLUSH_ROWS``: the accumulator's GEMMs are 2-3x
        slower per row on runs of a few hundred rows (K = 10 splits a batch that thin)."""
        self.pending.setdefault(label, []).append(run)
        self.pending_rows[label] = self.pending_rows.get(label, 0) + run.shape[0]
        self._held += run.shape[0]
        if self.pending_rows[label] >= FLUSH_ROWS:
            self._flush(label)
        elif self._held > HELD_ROWS:  # bound the rows held over all classes
            for held in list(self.pending):
                self._flush(held)

    def _flush(self, label: int) -> None:
        runs = self.pending.pop(label, [])
        self._held -= self.pending_rows.pop(label, 0)
        if runs:
            self.by_class[label].update(runs[0] if len(runs) == 1 else torch.cat(runs))

    def _fold_local(self) -> None:
        """Once: the held rows into their classes, then the classes into the pooled statistics."""
        for label in list(self.pending):
            self._flush(label)
        if not self._folded:
            for label in sorted(self.by_class):
                self.pooled.merge(self.by_class[label])
            self._folded = True

    def _class(self, label: int) -> CovarianceAccumulator:
        if label not in self.by_class:
            check_class_budget(self.dim, len(self.by_class) + 1, self.budget)
            self.by_class[label] = self.make(str(label))
        return self.by_class[label]

    def _add_sums(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        self._grow(int(labels.max()) + 1)
        order = labels.argsort(stable=True)  # a segment sum of the sorted rows: index_add_ is 5x slower on CPU
        rows = z.detach().index_select(0, order.to(z.device)).to(self.device, torch.float64)
        if self.normalize:
            rows = F.normalize(rows, dim=1)  # the rows the pooled accumulator sees
        lengths = torch.bincount(labels, minlength=self.counts.shape[0])
        counts = lengths.to(torch.float64)
        if self.skip_nonfinite:  # the rows the accumulator drops are dropped here too
            finite = torch.isfinite(rows.sum(dim=1))
            rows = torch.where(finite.unsqueeze(1), rows, torch.zeros_like(rows))
            counts = torch.bincount(labels[order], weights=finite.double(), minlength=self.counts.shape[0])
        self.counts += counts
        self.sums += torch.segment_reduce(rows, "sum", lengths=lengths)

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
        the size of the sums table, so every rank joins the same all-reduces. The pooled statistics
        take in the classes' (a local Chan merge) first."""
        self._fold_local()
        self.pooled.sync()
        if not is_distributed():
            for accumulator in self.by_class.values():
                accumulator.sync()
            return
        import torch.distributed as dist

        size = torch.tensor([self.counts.shape[0]], device=self.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        self._grow(int(size), exact=True)  # every rank the same table size for the all-reduce
        if self.scatter and self._sums_needed:
            dist.all_reduce(self.counts)
            dist.all_reduce(self.sums)
        if self.per_class:
            seen: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(seen, sorted(self.by_class))
            for label in sorted({k for labels in seen for k in labels}):
                self._class(label).sync()

    def _sums_from_classes(self) -> None:
        self._grow(max(self.by_class, default=-1) + 1, exact=True)
        for label, accumulator in self.by_class.items():
            moments = accumulator.finalize()
            self.counts[label] = float(moments.count)
            self.sums[label] = moments.mean.to(torch.float64) * float(moments.count)

    def compute(self) -> dict[str, Any]:
        """``{"pooled": Spectrum, "classes": {label: Spectrum}, "scatter": ClassScatter | None}``."""
        if not self.pooled.synced:
            self._fold_local()
        pooled = self.pooled.compute()
        counts = {k: self.by_class[k].finalize().count for k in sorted(self.by_class)}  # one read per class, at the end
        classes = {str(k): self.by_class[k].compute() for k, n in counts.items() if n >= 2}
        too_few = {str(k): n for k, n in counts.items() if n < 2}  # no covariance from one row: named, not solved
        scatter = None
        if self.scatter:
            if not self._sums_needed:  # n_k and s_k = n_k mu_k from each class's own moments
                self._sums_from_classes()
            scatter = class_scatter(self.pooled.finalize(), self.counts, self.sums)
        return {"pooled": pooled, "classes": classes, "scatter": scatter, "too_few": too_few}
