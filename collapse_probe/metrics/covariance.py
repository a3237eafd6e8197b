"""CovarianceAccumulator: streaming float64 covariance in O(d^2) memory.

State per accumulator: sample count n, mean (d,), centred second moment M2 (d, d), all in
float64 on the accumulator's device. Every batch is merged by the parallel (Chan et al.) update,
so the result does not depend on batch size, order or on how rows are split across processes.
No method reads a device value back to the host until :meth:`~CovarianceAccumulator.finalize`
(no per-batch sync).

Every method runs under ``torch.inference_mode``: the statistics never need autograd, and
tensors created inside a probe's inference-mode loop stay updatable by a later ``sync`` or
``compute`` outside it.

The state is declared once, in :data:`STATE`, each field with the rule by which two partial
states combine (the torchmetrics ``add_state(..., dist_reduce_fx=...)`` pattern). ``reset``,
``state_dict`` / ``load_state_dict``, ``merge`` and ``sync`` are all derived from that one
declaration, so they cannot drift apart. Whether the state is already global (``synced``) is
part of it: a synced accumulator refuses to be updated, merged or synced again.

Only the *lower triangle* of M2 is kept exact (the CPU update skips the upper blocks); every
consumer (merge, sync, the eigen-solve) reads or combines it elementwise, so no symmetrising copy
is ever made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from collapse_probe._utils.ranks import is_distributed
from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
from collapse_probe.functional import metrics as cpf
from collapse_probe.functional.moments import Moments
from collapse_probe.metrics.solve import solve_spectra

NO_BAD_BATCH = torch.iinfo(torch.int64).max
STATE_FORMAT = "collapse-probe/accumulator-v3"

#: Embedding dtypes from the most to the least precise (``least_precise`` reduces by the max index).
PRECISION_ORDER = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in PRECISION_ORDER}


def _less_precise(a: torch.dtype | None, b: torch.dtype | None) -> torch.dtype | None:
    if a is None or b is None:
        return a or b
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


@dataclass(frozen=True)
class StateField:
    """One piece of accumulator state and the rule that combines two partial copies of it.

    ``reduce`` is one of:

    * ``"moments"``: count, mean and M2 together, by the parallel (Chan) merge;
    * ``"unit_moments"``: the per-dimension mean and M2 of the L2-normalised rows, by the same
      merge on the diagonal (O(d); their count is ``count``);
    * ``"sum"``: added (counts);
    * ``"first"``: the (batch, rank) location of the first bad batch, the earliest one kept
      (its two fields reduce together);
    * ``"least_precise"``: the least precise embedding dtype seen.
    """

    name: str
    reduce: str
    on_device: bool
    initial: Callable[[CovarianceAccumulator], Any]


def _zeros(*shape: int) -> Callable[[CovarianceAccumulator], torch.Tensor]:
    return lambda acc: torch.zeros(tuple(acc.dim if s < 0 else s for s in shape), dtype=acc.dtype, device=acc.device)


STATE: tuple[StateField, ...] = (
    StateField("count", "moments", True, _zeros()),
    StateField("mean", "moments", True, _zeros(-1)),
    StateField("m2", "moments", True, _zeros(-1, -1)),
    # per-dimension moments of z / ||z|| (lightly's std_of_l2_normalized on raw input): O(d)
    StateField("unit_mean", "unit_moments", True, _zeros(-1)),
    StateField("unit_m2", "unit_moments", True, _zeros(-1)),
    # rows dropped (skip_nonfinite=True) or batches holding NaN/Inf (otherwise)
    StateField("nonfinite_count", "sum", True, lambda acc: torch.zeros((), dtype=torch.int64, device=acc.device)),
    # where the first bad batch was: its index on its rank, and that rank (-1 before a sync)
    StateField("first_bad_batch", "first", True,
               lambda acc: torch.full((), NO_BAD_BATCH, dtype=torch.int64, device=acc.device)),
    StateField("first_bad_rank", "first", True, lambda acc: torch.full((), -1, dtype=torch.int64, device=acc.device)),
    StateField("batches_seen", "sum", False, lambda acc: 0),
    StateField("input_dtype", "least_precise", False, lambda acc: None),
)
CONVENTIONS = ("dim", "center", "ddof", "normalize")


def stage_capacity(dim: int) -> int:
    """Rows staged before one merge on a CPU: 4 MiB of float64 rows, 256 to 4096 of them.

    1024 at d = 512, where staging makes the update 1.4x faster (as fast as 4096 rows, measured);
    256 at d = 2048, where the GEMM dominates and staging neither gains nor costs
    (docs/benchmarks.md). Small, so it adds little to the streaming path's peak memory.
    """
    return int(min(4096, max(256, 2**19 // dim)))


class _SymmetricRankUpdate:
    """``M2 += X^T X`` keeping the lower triangle of ``M2`` exact.

    On the CPU, for d above one block, the product is done block-row by block-row, only for
    blocks on or below the diagonal: ``(k + 1) / 2k`` of the GEMM's flops for k blocks (a
    symmetric rank-k update, which torch does not expose). Measured on a 2-core CPU at d=2048
    it runs at 0.72x the GEMM's flop rate counted on the symmetric work (N d^2), against 0.5x
    for a full ``addmm_`` and 0.3x for SciPy's or MKL's own ``dsyrk`` (docs/benchmarks.md). On
    a GPU one ``addmm_`` runs near cuBLAS peak.
    """

    def __init__(self, dim: int, device: torch.device):
        # about four block rows: 128 at d = 512, 512 at d = 2048 (the fastest measured there)
        self.block = max(128, dim // 4)
        self.blocked = device.type == "cpu" and dim > self.block

    def add_gram_(self, m2: torch.Tensor, rows: torch.Tensor) -> None:
        if not self.blocked:
            m2.addmm_(rows.T, rows)
            return
        dim = m2.shape[0]
        for start in range(0, dim, self.block):
            stop = min(start + self.block, dim)
            m2[start:stop, :stop].addmm_(rows[:, start:stop].T, rows[:, :stop])


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
        self._rank_update = _SymmetricRankUpdate(self.dim, self.device)
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
        self._staged = 0  # rows waiting in the buffer, not yet in the moments
        self._rows_buffer: torch.Tensor | None = None

    @torch.inference_mode()
    def _values(self) -> dict[str, Any]:
        self._flush()
        return {state.name: getattr(self, state.name) for state in STATE}

    def _assign(self, values: dict[str, Any], *, synced: bool) -> None:
        for state in STATE:
            setattr(self, state.name, values[state.name])
        self.synced = synced
        self._staged = 0

    @torch.inference_mode()
    def state_dict(self) -> dict[str, Any]:
        """Every :data:`STATE` field (tensors on CPU), the conventions and ``synced``: torch.save-able."""
        state = {"format": STATE_FORMAT, "synced": self.synced, "layer": self.layer}
        state |= {key: getattr(self, key) for key in CONVENTIONS}
        values = self._values()
        for field in STATE:
            value = values[field.name]
            if field.on_device:
                value = value.cpu()
            elif field.reduce == "least_precise":
                value = None if value is None else str(value).removeprefix("torch.")
            state[field.name] = value
        return state

    @torch.inference_mode()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the dimension and conventions must match."""
        if state.get("format") != STATE_FORMAT:
            raise CollapseProbeError(f"not a {STATE_FORMAT} state_dict (format {state.get('format')!r})")
        for key in CONVENTIONS:
            if state[key] != getattr(self, key):
                raise CollapseProbeError(f"state_dict has {key}={state[key]!r}, this accumulator {key}={getattr(self, key)!r}")
        values: dict[str, Any] = {}
        for field in STATE:
            value = state[field.name]
            if field.on_device:
                like = field.initial(self)
                value = value.to(dtype=like.dtype, device=self.device).clone().contiguous()
            elif field.reduce == "least_precise":
                value = None if value is None else _DTYPE_NAMES[value]
            values[field.name] = value
        self._assign(values, synced=bool(state["synced"]))

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
        self.input_dtype = _less_precise(self.input_dtype, z.dtype)
        rows = z.shape[0]
        if rows == 0:
            return
        if self.skip_nonfinite or rows > self._stage_capacity:
            self._flush()
            self._update_now(z, batch_index)
            return
        if self._staged + rows > self._stage_capacity:
            self._flush()
        block = self._buffer(self._stage_capacity)[self._staged : self._staged + rows]
        block.copy_(z.detach())
        if self.normalize:  # a NaN/Inf row stays non-finite through the normalisation
            block.copy_(F.normalize(block, dim=1))
        column_sums = block.sum(dim=0)  # one pass: the finiteness flag and, at the flush, the mean
        if self._can_check_by_sum(z.dtype, rows):
            bad = ~torch.isfinite(column_sums).all()
        else:
            bad = ~torch.isfinite(block).all()
        self.nonfinite_count += bad
        self._note_bad_batch(bad, batch_index)
        self._staged_sum = column_sums if self._staged == 0 else self._staged_sum + column_sums
        self._staged += rows

    def _can_check_by_sum(self, input_dtype: torch.dtype, rows: int) -> bool:
        """Whether a non-finite column sum proves a NaN/Inf in the batch.

        A NaN/Inf anywhere makes its column's sum non-finite, so the d sums (needed for the mean
        anyway) replace a B x d boolean pass -- but only when finite inputs cannot overflow the
        sum (float32 and narrower into float64). Otherwise (float64 input) each value is checked,
        so a finite input near the dtype's maximum is never reported as NaN/Inf.
        """
        return torch.finfo(input_dtype).max * rows < torch.finfo(self.dtype).max

    def _nonfinite_flag(self, values: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
        """On-device flag: does this (B, d) batch hold a NaN/Inf? (see :meth:`_can_check_by_sum`)."""
        if self._can_check_by_sum(input_dtype, values.shape[0]):
            return ~torch.isfinite(values.sum(dim=0)).all()
        return ~torch.isfinite(values).all()

    def _update_now(self, z: torch.Tensor, batch_index: int) -> None:
        """Merge one batch straight away (no staging): large batches, and ``skip_nonfinite``."""
        rows = self._buffer(z.shape[0])[: z.shape[0] + 1]
        values = rows[:-1]
        values.copy_(z.detach())
        if self.skip_nonfinite:
            finite_rows = torch.isfinite(values).all(dim=1)
            bad_rows = (~finite_rows).sum()
            self.nonfinite_count += bad_rows
            self._note_bad_batch(bad_rows > 0, batch_index)
            weights = finite_rows.to(self.dtype)[:, None]
            values.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).mul_(weights)
            n_batch: torch.Tensor | float = weights.sum()
        else:
            bad = self._nonfinite_flag(values, z.dtype)
            self.nonfinite_count += bad
            self._note_bad_batch(bad, batch_index)
            weights = None
            n_batch = float(values.shape[0])  # known on the host: no host-to-device copy
        if self.normalize:
            values.copy_(F.normalize(values, dim=1))
        self._merge_batch(rows, n_batch, weights)

    def _flush(self) -> None:
        """Merge the staged rows into the moments (every reader of the state calls this first)."""
        if self._staged:
            self._merge_batch(self._buffer(self._staged)[: self._staged + 1], float(self._staged), None,
                              batch_sum=self._staged_sum)
            self._staged = 0

    def _buffer(self, rows: int) -> torch.Tensor:
        """A working buffer of at least ``rows + 1`` rows, reused across batches (not state).

        On a CPU small batches are *staged* in it and merged ``stage_capacity`` rows at a time:
        one Chan update and one larger GEMM instead of one per batch (docs/benchmarks.md). The
        spare row after the data carries the Chan correction ``sqrt(n_a n_b / n) * delta``
        through the same GEMM. Reusing the buffer also saves a fresh multi-MB allocation (and
        its page faults) per batch.
        """
        buffer = self._rows_buffer
        if buffer is None or buffer.shape[0] < rows + 1:
            grown = torch.empty(rows + 1, self.dim, dtype=self.dtype, device=self.device)
            if buffer is not None and self._staged:
                grown[: self._staged].copy_(buffer[: self._staged])
            self._rows_buffer = buffer = grown
        return buffer

    def _note_bad_batch(self, bad: torch.Tensor, batch_index: int) -> None:
        """Keep the index of the first batch with non-finite values, on the device."""
        self.first_bad_batch = torch.where(bad, self.first_bad_batch.clamp(max=batch_index), self.first_bad_batch)

    def _merge_batch(self, rows: torch.Tensor, n_batch: torch.Tensor | float, weights: torch.Tensor | None,
                     batch_sum: torch.Tensor | None = None) -> torch.Tensor:
        """Chan update with this batch; ``rows[:-1]`` holds it, ``rows[-1]`` is scratch. Returns its mean.

        ``batch_sum``: the column sums of ``rows[:-1]`` when already known (staged rows).
        """
        values = rows[:-1]
        safe_n_batch = torch.clamp(n_batch, min=1.0) if isinstance(n_batch, torch.Tensor) else max(n_batch, 1.0)
        self._merge_unit_moments(values, n_batch, safe_n_batch, weights)
        batch_mean = (values.sum(dim=0) if batch_sum is None else batch_sum) / safe_n_batch
        values.sub_(batch_mean)
        if weights is not None:
            values.mul_(weights)
        total = self.count + n_batch
        delta = batch_mean - self.mean
        # M2 += Zc^T Zc + (n_a n_b / n) delta delta^T, as one product with the extra row.
        rows[-1] = delta * torch.sqrt(self.count * n_batch / torch.clamp(total, min=1.0))
        self._rank_update.add_gram_(self.m2, rows)
        self.mean += delta * (n_batch / torch.clamp(total, min=1.0))
        self.count = total
        return batch_mean

    def _merge_unit_moments(self, values: torch.Tensor, n_batch: torch.Tensor | float,
                            safe_n_batch: torch.Tensor | float, weights: torch.Tensor | None) -> None:
        """Chan-merge the per-dimension mean and M2 of this batch's L2-normalised rows: O(B d), no GEMM.

        Called before the rows are centred, with the count the moments get (dropped rows are zero
        and carry weight 0). With ``u_i = z_i / max(||z_i||, 1e-12)`` (``F.normalize``), the
        batch's ``sum_i u_i`` and ``sum_i u_i^2`` are two matrix-vector products with the inverse
        row norms -- no normalised copy of the batch -- and its M2 is ``sum u^2 - n mean^2``
        within the batch (|u| <= 1, so the float64 round-off is below 1e-12 of a unit variance),
        Chan-merged into the running moments. Measured: a quarter of the cost of normalising a
        copy (docs/benchmarks.md).
        """
        if self.normalize:  # the rows are unit vectors already
            inverse_norms = torch.ones(values.shape[0], dtype=values.dtype, device=values.device)
        else:
            inverse_norms = torch.linalg.vector_norm(values, dim=1).clamp_min(1e-12).reciprocal()
        if weights is not None:
            inverse_norms = inverse_norms * weights[:, 0]
        unit_sum = torch.mv(values.T, inverse_norms)
        unit_square_sum = torch.mv(values.square().T, inverse_norms.square())
        unit_mean = unit_sum / safe_n_batch
        unit_m2 = (unit_square_sum - unit_mean * unit_sum).clamp_min(0.0)
        _, self.unit_mean, self.unit_m2 = cpf.merge_moments(
            self.count, self.unit_mean, self.unit_m2, n_batch, unit_mean, unit_m2)

    # ------------------------------------------------------ combine (derived from STATE)
    def _combine(self, theirs: dict[str, Any]) -> dict[str, Any]:
        """The merged :data:`STATE` of ``self`` followed by another local state ``theirs``."""
        mine = self._values()
        merged: dict[str, Any] = {}
        kinds = {state.reduce for state in STATE}
        for kind in kinds:
            names = [state.name for state in STATE if state.reduce == kind]
            if kind == "moments":
                merged["count"], merged["mean"], merged["m2"] = cpf.merge_moments(
                    mine["count"], mine["mean"], mine["m2"], theirs["count"], theirs["mean"], theirs["m2"])
            elif kind == "unit_moments":
                _, merged["unit_mean"], merged["unit_m2"] = cpf.merge_moments(
                    mine["count"], mine["unit_mean"], mine["unit_m2"],
                    theirs["count"], theirs["unit_mean"], theirs["unit_m2"])
            elif kind == "sum":
                merged |= {name: mine[name] + theirs[name] for name in names}
            elif kind == "first":
                # their batch indices come after all of ours
                their_batch = theirs["first_bad_batch"]
                shifted = torch.where(their_batch == NO_BAD_BATCH, their_batch, their_batch + mine["batches_seen"])
                theirs_first = shifted < mine["first_bad_batch"]
                merged["first_bad_batch"] = torch.where(theirs_first, shifted, mine["first_bad_batch"])
                merged["first_bad_rank"] = torch.where(theirs_first, theirs["first_bad_rank"], mine["first_bad_rank"])
            elif kind == "least_precise":
                merged |= {name: _less_precise(mine[name], theirs[name]) for name in names}
            else:  # pragma: no cover - a new reduce kind must be handled here
                raise AssertionError(kind)
        return merged

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
        self._assign(self._combine(theirs), synced=False)

    @torch.inference_mode()
    def sync(self, group: Any = None) -> None:
        """All-reduce the statistics over ``torch.distributed`` so every rank holds the global ones.

        Each :data:`STATE` kind is reduced by its rule: the moments by two all-reduces in O(d^2)
        memory (first ``(n_i, n_i * mean_i)`` for the global mean, then
        ``M2_i + n_i (mean_i - mean)(mean_i - mean)^T``, whose sum is the exact pooled M2: the
        k-way Chan update); counts by a sum; the first bad batch by a (batch, rank) minimum; the
        input dtype by the least precise. Marks the state synced; a no-op when torch.distributed
        is not initialised or the state is already synced.
        """
        import torch.distributed as dist

        if not is_distributed() or self.synced:
            return
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        mine = self._values()
        merged: dict[str, Any] = {}

        dim = self.dim
        totals = torch.cat([mine["count"].reshape(1), mine["mean"] * mine["count"], mine["unit_mean"] * mine["count"]])
        dist.all_reduce(totals, group=group)
        merged["count"] = totals[0]
        merged["mean"] = totals[1 : dim + 1] / torch.clamp(totals[0], min=1.0)
        merged["unit_mean"] = totals[dim + 1 :] / torch.clamp(totals[0], min=1.0)
        offset = mine["mean"] - merged["mean"]
        weighted = offset * torch.sqrt(mine["count"])
        m2 = mine["m2"].clone().addr_(weighted, weighted)
        dist.all_reduce(m2, group=group)
        merged["m2"] = m2
        # the same k-way merge on the O(d) moments of the normalised rows
        unit_m2 = mine["unit_m2"] + (mine["unit_mean"] - merged["unit_mean"]).square() * mine["count"]
        dist.all_reduce(unit_m2, group=group)
        merged["unit_m2"] = unit_m2

        sum_names = [state.name for state in STATE if state.reduce == "sum"]
        sums = torch.stack([torch.as_tensor(mine[name], dtype=torch.int64, device=self.device).reshape(())
                            for name in sum_names])
        dist.all_reduce(sums, group=group)
        for name, total in zip(sum_names, sums, strict=True):
            merged[name] = total if self._field(name).on_device else int(total)

        batch = mine["first_bad_batch"]
        encoded = torch.where(batch == NO_BAD_BATCH, batch, batch * world + rank)
        dist.all_reduce(encoded, op=dist.ReduceOp.MIN, group=group)
        found = encoded != NO_BAD_BATCH
        merged["first_bad_batch"] = torch.where(found, encoded // world, encoded)
        merged["first_bad_rank"] = torch.where(found, encoded % world, -1)

        dtype = mine["input_dtype"]
        index = torch.tensor(-1 if dtype is None else PRECISION_ORDER.index(dtype), device=self.device)
        dist.all_reduce(index, op=dist.ReduceOp.MAX, group=group)
        merged["input_dtype"] = None if int(index) < 0 else PRECISION_ORDER[int(index)]
        self._assign(merged, synced=True)

    @staticmethod
    def _field(name: str) -> StateField:
        return next(state for state in STATE if state.name == name)

    # --------------------------------------------------------------- compute
    @torch.inference_mode()
    def finalize(self) -> Moments:
        """Read the on-device flags once and hand the statistics over as :class:`Moments`.

        Raises for non-finite input (naming the layer and the first batch) and for an empty
        stream. The returned ``m2`` is this accumulator's own tensor (no copy): solve it before
        updating again.
        """
        self._flush()
        self._rows_buffer = None  # freed: the solve then holds at most three d x d matrices
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
