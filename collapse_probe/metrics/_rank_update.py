"""One batch of rows into the running moments: the Chan update as one rank-(B+1) product.

Pure tensor functions (they update the tensors they are given, in place where named ``_``):

* :func:`add_lower_gram_`: ``M2 += X^T X`` keeping the lower triangle exact, block-row by
  block-row on a CPU (:class:`SymmetricRankUpdate` picks the block for a dimension and device);
* :func:`merge_rows_`: the parallel (Chan et al.) update of ``(count, mean, M2)`` by one batch,
  with the correction ``(n_a n_b / n) delta delta^T`` carried through the same product;
* :func:`merge_unit_moments`: the same merge on the per-dimension moments of the
  L2-normalised rows, O(B d) and no GEMM.

Only the lower triangle of M2 is exact; every reader of M2 (merge, sync, the eigen-solve) reads
or combines it elementwise, so no symmetrising copy is made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from collapse_probe import functional as cpf

Count = torch.Tensor | float


def block_size(dim: int) -> int:
    """Rows of M2 per block: about four block rows, 128 at d = 512, 512 at d = 2048 (the fastest measured)."""
    return max(128, dim // 4)


def add_lower_gram_(m2: torch.Tensor, rows: torch.Tensor, block: int | None) -> None:
    """``M2 += rows^T rows`` for (K, d) ``rows`` into (d, d) ``M2``; with ``block``, lower triangle only.

    ``block=None``: one ``addmm_`` (the whole matrix). Otherwise block row ``[s, s + block)``
    gets ``rows[:, s:s+block]^T rows[:, :s+block]``: the blocks on or below the diagonal,
    ``(k + 1) / 2k`` of the GEMM's flops for k blocks (a symmetric rank-k update, which torch
    does not expose). The blocks above the diagonal are left as they were.
    """
    if block is None:
        m2.addmm_(rows.T, rows)
        return
    dim = m2.shape[0]
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        m2[start:stop, :stop].addmm_(rows[:, start:stop].T, rows[:, :stop])


class SymmetricRankUpdate:
    """``M2 += X^T X`` keeping the lower triangle of ``M2`` exact, the fastest way for this device.

    On the CPU, for d above one block, :func:`add_lower_gram_` works block-row by block-row.
    Measured on a 2-core CPU at d=2048 it runs at 0.72x the GEMM's flop rate counted on the
    symmetric work (N d^2), against 0.5x for a full ``addmm_`` and 0.3x for SciPy's or MKL's own
    ``dsyrk`` (docs/benchmarks.md). On a GPU one ``addmm_`` runs near cuBLAS peak.
    """

    def __init__(self, dim: int, device: torch.device):
        self.block = block_size(dim)
        self.blocked = device.type == "cpu" and dim > self.block

    def add_gram_(self, m2: torch.Tensor, rows: torch.Tensor) -> None:
        add_lower_gram_(m2, rows, self.block if self.blocked else None)


def merge_rows_(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, rows: torch.Tensor, n_batch: Count,
                weights: torch.Tensor | None, *, batch_sum: torch.Tensor | None,
                add_gram_: Callable[[torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
    """Chan-merge one batch into ``(count, mean, M2)``; returns the new count (``mean``, ``M2`` in place).

    ``rows``: (B + 1, d); ``rows[:-1]`` holds the batch (centred here, in place), ``rows[-1]`` is
    scratch. ``n_batch``: its row count (a tensor when rows were dropped; those rows are zero and
    have ``weights`` 0, shape (B, 1)). ``batch_sum``: the column sums of ``rows[:-1]`` when already
    known. With ``delta = mean_b - mean_a`` and ``n = n_a + n_b``::

        M2   += Zc^T Zc + (n_a n_b / n) delta delta^T     (one product: rows[-1] = sqrt(n_a n_b / n) delta)
        mean += delta n_b / n
    """
    values = rows[:-1]
    safe_n_batch = torch.clamp(n_batch, min=1.0) if isinstance(n_batch, torch.Tensor) else max(n_batch, 1.0)
    batch_mean = (values.sum(dim=0) if batch_sum is None else batch_sum) / safe_n_batch
    values.sub_(batch_mean)
    if weights is not None:
        values.mul_(weights)
    total = count + n_batch
    delta = batch_mean - mean
    rows[-1] = delta * torch.sqrt(count * n_batch / torch.clamp(total, min=1.0))
    add_gram_(m2, rows)
    mean += delta * (n_batch / torch.clamp(total, min=1.0))
    return total


def merge_unit_moments(count: torch.Tensor, unit_mean: torch.Tensor, unit_m2: torch.Tensor, values: torch.Tensor,
                       n_batch: Count, weights: torch.Tensor | None, *,
                       unit_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan-merge the per-dimension mean and M2 of this batch's L2-normalised rows; returns the new pair.

    ``values``: the (B, d) batch before centring; ``count``: the rows merged so far (the moments'
    count); ``unit_rows``: the rows are unit vectors already. Dropped rows are zero and carry
    ``weights`` 0. With ``u_i = z_i / max(||z_i||, 1e-12)`` (``F.normalize``), the batch's
    ``sum_i u_i`` and ``sum_i u_i^2`` are two matrix-vector products with the inverse row norms --
    no normalised copy of the batch -- and its M2 is ``sum u^2 - n mean^2`` within the batch
    (|u| <= 1, so the float64 round-off is below 1e-12 of a unit variance). Measured: a quarter
    of the cost of normalising a copy (docs/benchmarks.md).
    """
    safe_n_batch = torch.clamp(n_batch, min=1.0) if isinstance(n_batch, torch.Tensor) else max(n_batch, 1.0)
    if unit_rows:
        inverse_norms = torch.ones(values.shape[0], dtype=values.dtype, device=values.device)
    else:
        inverse_norms = torch.linalg.vector_norm(values, dim=1).clamp_min(1e-12).reciprocal()
    if weights is not None:
        inverse_norms = inverse_norms * weights[:, 0]
    unit_sum = torch.mv(values.T, inverse_norms)
    unit_square_sum = torch.mv(values.square().T, inverse_norms.square())
    batch_unit_mean = unit_sum / safe_n_batch
    batch_unit_m2 = (unit_square_sum - batch_unit_mean * unit_sum).clamp_min(0.0)
    _, unit_mean, unit_m2 = cpf.merge_moments(count, unit_mean, unit_m2, n_batch, batch_unit_mean, batch_unit_m2)
    return unit_mean, unit_m2
