"""CovarianceAccumulator: streaming float64 covariance in O(d^2) memory.

State per accumulator: sample count n, mean (d,), centred second moment M2 (d, d), all in
float64 on the accumulator's device. Every batch is merged by the parallel (Chan et al.) update,
so the result does not depend on batch size, order or on how rows are split across processes.
No method reads a device value back to the host until :meth:`~CovarianceAccumulator.finalize`
(no per-batch sync).

Every method runs under ``torch.inference_mode``: the statistics never need autograd, and
tensors created inside a probe's inference-mode loop stay updatable by a later ``sync`` or
``compute`` outside it.

The state is declared once, in :data:`STATE` (:mod:`._state`), each field with the rule by which
two partial states combine (the torchmetrics ``add_state(..., dist_reduce_fx=...)`` pattern).
``reset``, ``state_dict`` / ``load_state_dict``, ``merge`` and ``sync`` are all derived from that
one declaration, so they cannot drift apart. Whether the state is already global (``synced``) is
part of it: a synced accumulator refuses to be updated, merged or synced again.

A batch flows ``update`` -> :mod:`._staging` (the row buffer: CPU staging, the NaN/Inf checks)
-> :mod:`._rank_update` (the Chan update as one rank-(B+1) product on the lower triangle of M2)
-> :meth:`~CovarianceAccumulator.finalize` -> :func:`~collapse_probe.metrics.solve.solve_spectra`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from collapse_probe._utils.ranks import is_distributed
from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
from collapse_probe.functional.moments import Moments
from collapse_probe.metrics._rank_update import SymmetricRankUpdate, merge_rows_, merge_unit_moments
from collapse_probe.metrics._staging import (
    RowStage,
    drop_nonfinite_rows_,
    nonfinite_flag,
    stage_capacity,
)
from collapse_probe.metrics._state import (
    CONVENTIONS,
    NO_BAD_BATCH,
    PRECISION_ORDER,
    STATE,
    STATE_FORMAT,
    StateField,
    all_reduce,
    combine,
    from_saved,
    less_precise,
    to_saved,
)
from collapse_probe.metrics.solve import solve_spectra

__all__ = [
    "CONVENTIONS",
    "NO_BAD_BATCH",
    "PRECISION_ORDER",
    "STATE",
    "STATE_FORMAT",
    "CovarianceAccumulator",
    "StateField",
    "stage_capacity",
]


class CovarianceAccumulator:
    """Streaming covariance of (B, dim) batches, merged by the parallel (Chan) update in float64.

    Args:
        dim: embedding dimension d.
        device: where the statistics live (default CPU); put it on the model's device so the
            per-batch GEMM runs there.
        dtype: accumulation dtype; float64 unless you know why not.
        center: subtract the mean (the paper's convention). ``False`` gives the raw second moment.
        ddof: divisor ``n - ddof``; default 1 when centred (the paper's public script), else 0.
        normalize: L2-normalise every row before accumulating (the public script does this).
        layer: a name carried into the result.
        skip_nonfinite: drop rows holding NaN/Inf (counted in ``Spectrum.n_skipped_nonfinite``)
            instead of failing in :meth:`compute`.

    Lifecycle: ``update`` any number of times, ``merge`` other local accumulators, then either
    ``compute`` (single process) or ``sync`` followed by ``compute`` (torch.distributed). After
    ``sync`` the state is global: ``update``/``merge``/``sync`` raise or do nothing until ``reset``.

    >>> acc = CovarianceAccumulator(2)
    >>> acc.update(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    >>> acc.update(torch.tensor([[2.0, 1.0]]))
    >>> spectrum = acc.compute()
    >>> spectrum.n_samples, [round(v, 6) for v in spectrum.eigenvalues.tolist()]
    (3, [2.0, 0.0])
    """

    def __init__(
        self,
        dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        center: bool = True,
        ddof: int | None = None,
        normalize: bool = False,
        layer: str | None = None,
        skip_nonfinite: bool = False,
    ):
        if int(dim) < 1:
            raise CollapseProbeError(f"dim must be a positive integer, got {dim}")
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.center = center
        self.ddof = (1 if center else 0) if ddof is None else int(ddof)
        self.normalize = normalize
        self.layer = layer
        self.skip_nonfinite = skip_nonfinite
        self._rank_update = SymmetricRankUpdate(self.dim, self.device)
        # CPU only: per-batch op overhead matters there; a GPU merges each batch as it comes
        self._stage_capacity = stage_capacity(self.dim) if self.device.type == "cpu" else 0
        self.reset()

    # ----------------------------------------------------------------- state
    @torch.inference_mode()
    def reset(self) -> None:
        """Forget every sample, every flag and the synced status."""
        for state in STATE:
            setattr(self, state.name, state.initial(self))
        self.synced = False
        self._stage = RowStage(self.dim, self.dtype, self.device)  # rows not yet in the moments

    @torch.inference_mode()
    def _values(self) -> dict[str, Any]:
        self._flush()
        return {state.name: getattr(self, state.name) for state in STATE}

    def _assign(self, values: dict[str, Any], *, synced: bool) -> None:
        for state in STATE:
            setattr(self, state.name, values[state.name])
        self.synced = synced
        self._stage.clear()

    @torch.inference_mode()
    def state_dict(self) -> dict[str, Any]:
        """Every :data:`STATE` field (tensors on CPU), the conventions and ``synced``: torch.save-able."""
        state = {"format": STATE_FORMAT, "synced": self.synced, "layer": self.layer}
        state |= {key: getattr(self, key) for key in CONVENTIONS}
        return state | to_saved(self._values())

    @torch.inference_mode()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the dimension and conventions must match."""
        if state.get("format") != STATE_FORMAT:
            raise CollapseProbeError(f"not a {STATE_FORMAT} state_dict (format {state.get('format')!r})")
        for key in CONVENTIONS:
            if state[key] != getattr(self, key):
                raise CollapseProbeError(f"state_dict has {key}={state[key]!r}, this accumulator {key}={getattr(self, key)!r}")
        self._assign(from_saved(state, self), synced=bool(state["synced"]))

    # ---------------------------------------------------------------- update
    @torch.inference_mode()
    def update(self, z: torch.Tensor) -> None:
        """Add a (B, dim) batch. Converts to the accumulation dtype on this device; never syncs."""
        if not isinstance(z, torch.Tensor):
            raise CollapseProbeError(f"update expects a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise CollapseProbeError(f"embeddings must be floating point, got {z.dtype} (layer {self.layer or '<output>'})")
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise CollapseProbeError(
                f"expected a (batch, {self.dim}) tensor, got shape {tuple(z.shape)} (layer {self.layer or '<output>'})"
            )
        if self.synced:
            raise CollapseProbeError("this accumulator holds synced (global) statistics; call reset() before updating it again")
        batch_index = self.batches_seen
        self.batches_seen += 1
        self.input_dtype = less_precise(self.input_dtype, z.dtype)
        rows = z.shape[0]
        if rows == 0:
            return
        if self.skip_nonfinite or rows > self._stage_capacity:
            self._flush()
            self._update_now(z, batch_index)
            return
        if self._stage.staged + rows > self._stage_capacity:
            self._flush()
        bad = self._stage.stage(z, self._stage_capacity, normalize=self.normalize)
        self.nonfinite_count += bad
        self._note_bad_batch(bad, batch_index)

    def _update_now(self, z: torch.Tensor, batch_index: int) -> None:
        """Merge one batch straight away (no staging): large batches, and ``skip_nonfinite``."""
        rows = self._stage.rows(z.shape[0])[: z.shape[0] + 1]
        values = rows[:-1]
        values.copy_(z.detach())
        if self.skip_nonfinite:
            weights, n_batch, bad_rows = drop_nonfinite_rows_(values)
            self.nonfinite_count += bad_rows
            self._note_bad_batch(bad_rows > 0, batch_index)
        else:
            bad = nonfinite_flag(values, z.dtype)
            self.nonfinite_count += bad
            self._note_bad_batch(bad, batch_index)
            weights = None
            n_batch = float(values.shape[0])  # known on the host: no host-to-device copy
        if self.normalize:
            values.copy_(F.normalize(values, dim=1))
        self._merge_batch(rows, n_batch, weights)

    def _flush(self) -> None:
        """Merge the staged rows into the moments (every reader of the state calls this first)."""
        staged = self._stage.take()
        if staged is not None:
            rows, count, column_sums = staged
            self._merge_batch(rows, float(count), None, batch_sum=column_sums)

    def _note_bad_batch(self, bad: torch.Tensor, batch_index: int) -> None:
        """Keep the index of the first batch with non-finite values, on the device."""
        self.first_bad_batch = torch.where(bad, self.first_bad_batch.clamp(max=batch_index), self.first_bad_batch)

    def _merge_batch(self, rows: torch.Tensor, n_batch: torch.Tensor | float, weights: torch.Tensor | None,
                     batch_sum: torch.Tensor | None = None) -> None:
        """Chan update with this batch; ``rows[:-1]`` holds it, ``rows[-1]`` is scratch.

        The unit moments first: they read the rows before :func:`merge_rows_` centres them, and
        the count before it grows.
        """
        self.unit_mean, self.unit_m2 = merge_unit_moments(
            self.count, self.unit_mean, self.unit_m2, rows[:-1], n_batch, weights, unit_rows=self.normalize)
        self.count = merge_rows_(self.count, self.mean, self.m2, rows, n_batch, weights, batch_sum=batch_sum,
                                 add_gram_=self._rank_update.add_gram_)

    # ------------------------------------------------------ combine (derived from STATE)
    @torch.inference_mode()
    def merge(self, other: CovarianceAccumulator) -> None:
        """Fold ``other``'s samples into this accumulator (parallel update; ``other`` unchanged).

        Both must be local (not synced): merging into global statistics would mix local rows into
        a result every rank already holds, and merging two synced ones would count rows twice.
        """
        if not isinstance(other, CovarianceAccumulator):
            raise CollapseProbeError(f"merge expects a CovarianceAccumulator, got {type(other).__name__}")
        if other.dim != self.dim:
            raise CollapseProbeError(f"cannot merge a dim={other.dim} accumulator into a dim={self.dim} one")
        if (other.center, other.normalize, other.ddof) != (self.center, self.normalize, self.ddof):
            raise CollapseProbeError("cannot merge accumulators with different center/normalize/ddof conventions")
        if self.synced or other.synced:
            raise CollapseProbeError(
                "cannot merge a synced accumulator: after sync() it holds every rank's rows already; "
                "merge local accumulators first, then sync() once"
            )
        theirs = {}
        other_values = other._values()
        for state in STATE:
            value = other_values[state.name]
            if state.on_device:
                value = value.to(device=self.device, dtype=getattr(self, state.name).dtype)
            theirs[state.name] = value
        self._assign(combine(self._values(), theirs), synced=False)

    @torch.inference_mode()
    def sync(self, group: Any = None) -> None:
        """All-reduce the statistics over ``torch.distributed`` so every rank holds the global ones.

        Each :data:`STATE` kind is reduced by its rule (:func:`~collapse_probe.metrics._state.all_reduce`):
        the moments by two all-reduces in O(d^2) memory (the k-way Chan update), counts by a sum,
        the first bad batch by a (batch, rank) minimum, the input dtype by the least precise.
        Marks the state synced; a no-op when torch.distributed is not initialised or the state is
        already synced.
        """
        if not is_distributed() or self.synced:
            return
        self._assign(all_reduce(self._values(), self.device, group), synced=True)

    # --------------------------------------------------------------- compute
    @torch.inference_mode()
    def finalize(self) -> Moments:
        """Read the on-device flags once and hand the statistics over as :class:`Moments`.

        Raises for non-finite input (naming the layer and the first batch) and for an empty
        stream. The returned ``m2`` is this accumulator's own tensor (no copy): solve it before
        updating again.
        """
        self._flush()
        self._stage.free()  # the solve then holds at most three d x d matrices
        count, nonfinite, first_batch, first_rank = (int(v) for v in torch.stack(
            [self.count.to(torch.int64), self.nonfinite_count, self.first_bad_batch, self.first_bad_rank]
        ).cpu())
        where = f"layer {self.layer!r}" if self.layer else "the model output"
        if nonfinite and not self.skip_nonfinite:
            place = f"batch {first_batch}" + (f" on rank {first_rank}" if first_rank >= 0 else "")
            raise NonFiniteEmbeddingError(
                f"non-finite embeddings (NaN/Inf) in {where}, first in {place} ({nonfinite} batches affected); "
                "pass skip_nonfinite=True (CLI: --skip-nonfinite) to drop such rows"
            )
        if self.batches_seen == 0:
            raise CollapseProbeError(f"no batches were accumulated for {where}: is the loader empty?")
        return Moments(
            count=count, mean=self.mean, m2=self.m2, center=self.center, normalize=self.normalize,
            ddof=self.ddof, dtype=str(self.dtype).removeprefix("torch."),
            input_dtype=str(self.input_dtype or self.dtype).removeprefix("torch."), layer=self.layer,
            n_skipped_nonfinite=nonfinite if self.skip_nonfinite else 0,
            unit_mean=self.unit_mean, unit_m2=self.unit_m2,
        )

    def compute(self):
        """Solve the eigenproblem and return an immutable :class:`~collapse_probe.results.spectrum.Spectrum`."""
        return solve_spectra([self.finalize()])[0]
