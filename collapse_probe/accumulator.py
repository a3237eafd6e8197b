"""CovarianceAccumulator: streaming float64 covariance in O(d^2) memory.

State per accumulator: sample count n, mean (d,), centred second moment M2 (d, d), all in
float64 on the accumulator's device. Every batch is merged by the parallel (Chan et al.) update,
so the result does not depend on batch size, order or on how rows are split across processes.
No method reads a device value back to the host until :meth:`compute` (no per-batch sync).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from collapse_probe import functional as cpf
from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError

NO_BAD_BATCH = torch.iinfo(torch.int64).max

_DTYPES = {str(dtype): dtype for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def _dtype_from_name(name: str) -> torch.dtype:
    return _DTYPES[name]


def _less_precise(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


class _SymmetricRankUpdate:
    """``M2 += X^T X`` keeping (at least) the lower triangle of ``M2`` exact.

    On the CPU, for d above one block, the product is done block-row by block-row, only for
    blocks on or below the diagonal: ``(k + 1) / 2k`` of the GEMM's flops for k blocks (a
    symmetric rank-k update, which torch does not expose). Measured on a 2-core CPU at d=2048
    it beats a full ``addmm_`` by 1.38x and SciPy's ``dsyrk``, whose OpenBLAS threads fight
    torch's OpenMP threads when calls interleave (docs/benchmarks.md). On a GPU one ``addmm_``
    runs near cuBLAS peak. ``full(m2)`` returns the symmetric matrix either way.
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

    def full(self, m2: torch.Tensor) -> torch.Tensor:
        if self.blocked:
            return torch.tril(m2) + torch.tril(m2, diagonal=-1).T
        return (m2 + m2.T) / 2


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
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every sample."""
        zeros = dict(dtype=self.dtype, device=self.device)
        self.count = torch.zeros((), **zeros)
        self.mean = torch.zeros(self.dim, **zeros)
        self.m2 = torch.zeros(self.dim, self.dim, **zeros)
        # rows dropped (skip_nonfinite=True) or batches holding NaN/Inf (otherwise), on the device
        self.nonfinite_count = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first_bad_batch = torch.full((), NO_BAD_BATCH, dtype=torch.int64, device=self.device)
        self.batches_seen = 0
        self.input_dtype: torch.dtype | None = None
        self._synced = False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors on CPU plus the conventions (torch.save-able)."""
        return {
            "dim": self.dim,
            "center": self.center,
            "ddof": self.ddof,
            "normalize": self.normalize,
            "layer": self.layer,
            "count": self.count.cpu(),
            "mean": self.mean.cpu(),
            "m2": self._rank_update.full(self.m2).cpu(),
            "nonfinite_count": self.nonfinite_count.cpu(),
            "first_bad_batch": self.first_bad_batch.cpu(),
            "batches_seen": self.batches_seen,
            "input_dtype": None if self.input_dtype is None else str(self.input_dtype),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the dimension and conventions must match."""
        for key in ("dim", "center", "ddof", "normalize"):
            if state[key] != getattr(self, key):
                raise CollapseProbeError(f"state_dict has {key}={state[key]!r}, this accumulator {key}={getattr(self, key)!r}")
        to = dict(dtype=self.dtype, device=self.device)
        self.count = state["count"].to(**to).clone()
        self.mean = state["mean"].to(**to).clone()
        self.m2 = state["m2"].to(**to).clone().contiguous()
        self.nonfinite_count = state["nonfinite_count"].to(self.device).clone()
        self.first_bad_batch = state["first_bad_batch"].to(self.device).clone()
        self.batches_seen = int(state["batches_seen"])
        self.input_dtype = None if state["input_dtype"] is None else _dtype_from_name(state["input_dtype"])

    # ---------------------------------------------------------------- update
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
        if self._synced:
            raise CollapseProbeError("this accumulator was synced across processes; call reset() before updating it again")
        batch_index = self.batches_seen
        self.batches_seen += 1
        self.input_dtype = z.dtype if self.input_dtype is None else _less_precise(self.input_dtype, z.dtype)
        if z.shape[0] == 0:
            return
        # One spare row: the Chan correction sqrt(n_a n_b / n) * delta rides along in the same GEMM.
        rows = torch.empty(z.shape[0] + 1, self.dim, dtype=self.dtype, device=self.device)
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
            weights = None
            n_batch = float(values.shape[0])  # known on the host: no host-to-device copy
        if self.normalize:
            values.copy_(F.normalize(values, dim=1))
        batch_mean = self._merge_batch(rows, n_batch, weights)
        if not self.skip_nonfinite:
            # Any NaN/Inf in the batch makes its float64 mean non-finite (finite float32 values
            # cannot overflow a float64 sum): a d-element check instead of a pass over B x d.
            bad = ~torch.isfinite(batch_mean).all()
            self.nonfinite_count += bad
            self._note_bad_batch(bad, batch_index)

    def _note_bad_batch(self, bad: torch.Tensor, batch_index: int) -> None:
        """Keep the index of the first batch with non-finite values, on the device."""
        self.first_bad_batch = torch.where(bad, self.first_bad_batch.clamp(max=batch_index), self.first_bad_batch)

    def _merge_batch(self, rows: torch.Tensor, n_batch: torch.Tensor | float, weights: torch.Tensor | None) -> torch.Tensor:
        """Chan update with this batch; ``rows[:-1]`` holds it, ``rows[-1]`` is scratch. Returns its mean."""
        values = rows[:-1]
        safe_n_batch = torch.clamp(n_batch, min=1.0) if isinstance(n_batch, torch.Tensor) else max(n_batch, 1.0)
        batch_mean = values.sum(dim=0) / safe_n_batch
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

    def merge(self, other: CovarianceAccumulator) -> None:
        """Fold ``other``'s samples into this accumulator (parallel update; ``other`` unchanged)."""
        if not isinstance(other, CovarianceAccumulator):
            raise CollapseProbeError(f"merge expects a CovarianceAccumulator, got {type(other).__name__}")
        if other.dim != self.dim:
            raise CollapseProbeError(f"cannot merge a dim={other.dim} accumulator into a dim={self.dim} one")
        if (other.center, other.normalize) != (self.center, self.normalize):
            raise CollapseProbeError("cannot merge accumulators with different center/normalize conventions")
        to = dict(dtype=self.dtype, device=self.device)
        self.count, self.mean, m2 = cpf.merge_moments(
            self.count,
            self.mean,
            self._rank_update.full(self.m2),
            other.count.to(**to),
            other.mean.to(**to),
            other._rank_update.full(other.m2).to(**to),
        )
        self.m2 = m2.contiguous()
        self.nonfinite_count = self.nonfinite_count + other.nonfinite_count.to(self.device)
        other_bad = other.first_bad_batch.to(self.device)
        other_bad = torch.where(other_bad == NO_BAD_BATCH, other_bad, other_bad + self.batches_seen)
        self.first_bad_batch = torch.minimum(self.first_bad_batch, other_bad)
        self.batches_seen += other.batches_seen
        if other.input_dtype is not None:
            self.input_dtype = other.input_dtype if self.input_dtype is None else _less_precise(self.input_dtype, other.input_dtype)

    def sync(self, group: Any = None) -> None:
        """All-reduce the statistics over ``torch.distributed`` so every rank holds the global ones.

        Two all-reduces, O(d^2) memory: first ``(n_i, n_i * mean_i)`` for the global mean, then
        ``M2_i + n_i (mean_i - mean)(mean_i - mean)^T``, whose sum is the exact pooled M2 (the
        k-way form of the Chan update). A no-op when torch.distributed is not initialised.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or self._synced:
            return
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        totals = torch.cat([self.count.reshape(1), self.mean * self.count])
        dist.all_reduce(totals, group=group)
        count = totals[0]
        mean = totals[1:] / torch.clamp(count, min=1.0)
        offset = self.mean - mean
        m2 = self._rank_update.full(self.m2) + torch.outer(offset, offset) * self.count
        dist.all_reduce(m2, group=group)
        nonfinite = self.nonfinite_count.clone()
        dist.all_reduce(nonfinite, group=group)
        batches = torch.tensor(self.batches_seen, device=self.device)
        dist.all_reduce(batches, group=group)
        first_bad_encoded = torch.where(
            self.first_bad_batch == NO_BAD_BATCH, self.first_bad_batch, self.first_bad_batch * world + rank
        )
        dist.all_reduce(first_bad_encoded, op=dist.ReduceOp.MIN, group=group)
        self.count, self.mean, self.m2 = count, mean, m2.contiguous()
        self.nonfinite_count = nonfinite
        self.batches_seen = int(batches)
        self.first_bad_batch = first_bad_encoded
        self._bad_batch_world = world
        self._synced = True

    # --------------------------------------------------------------- compute
    def _finalize_checks(self) -> tuple[int, int]:
        """Read the on-device flags once; raise for non-finite input or too few samples."""
        count, nonfinite, first_bad = (int(v) for v in torch.stack(
            [self.count.to(torch.int64), self.nonfinite_count, self.first_bad_batch]
        ).cpu())
        where = f"layer {self.layer!r}" if self.layer else "the model output"
        if nonfinite and not self.skip_nonfinite:
            if getattr(self, "_bad_batch_world", None):
                batch, rank = divmod(first_bad, self._bad_batch_world)
                place = f"batch {batch} on rank {rank}"
            else:
                place = f"batch {first_bad}"
            raise NonFiniteEmbeddingError(
                f"non-finite embeddings (NaN/Inf) in {where}, first in {place} ({nonfinite} batches affected); "
                "pass skip_nonfinite=True to drop such rows"
            )
        if self.batches_seen == 0:
            raise CollapseProbeError(f"no batches were accumulated for {where}: is the loader empty?")
        if count < 2:
            raise CollapseProbeError(f"need at least 2 finite samples for a covariance of {where}, got {count}")
        if count <= self.dim:
            warnings.warn(
                f"{where}: n_samples={count} <= dim={self.dim}; the covariance rank is limited by the "
                f"sample count (at most {count - self.ddof} non-zero eigenvalues)",
                stacklevel=3,
            )
        return count, nonfinite

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, G)``: the covariance (or second moment when ``center=False``) and ``Z^T Z``."""
        m2 = self._rank_update.full(self.m2)
        gram = cpf.uncentred_gram(self.count, self.mean, m2)
        matrix = m2 if self.center else gram
        return cpf.covariance_from_moments(self.count, matrix, self.ddof), gram

    def compute(self):
        """Solve the eigenproblem and return an immutable :class:`~collapse_probe.result.Spectrum`."""
        from collapse_probe.solve import solve_spectra

        return solve_spectra([self])[0]
