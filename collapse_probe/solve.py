"""Batched eigen-solves: many spectra of equal dimension in one ``torch.linalg.eigvalsh`` call.

``eigvalsh`` (not ``svdvals``): the covariance is symmetric PSD, its eigenvalues are its singular
values, and the symmetric solver is an order of magnitude cheaper (PAPER.md; docs/benchmarks.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from collapse_probe import functional as cpf
from collapse_probe.accumulator import CovarianceAccumulator
from collapse_probe.errors import CollapseProbeError
from collapse_probe.result import Spectrum
from collapse_probe.threads import single_threaded

SINGLE_THREAD_MAX_DIM = 4096
"""CPU solves up to this d run on one thread (docs/benchmarks.md, "Eigen-solves"). Measured on a
2-core CPU: on a quiet machine one thread costs 15% at d = 2048 (662 vs 578 ms for the
covariance + Gram pair) and nothing below; with one other busy process a 2-thread MKL
``eigvalsh`` stalled 9x (3.04 s vs 0.34 s for one d = 2048 matrix). Bounded loss, unbounded gain."""


def _check_square(matrix: torch.Tensor, index: int) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise CollapseProbeError(f"item {index}: expected a square (d, d) matrix, got shape {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise CollapseProbeError(f"item {index}: expected a floating-point matrix, got {matrix.dtype}")


def solve_spectra(items: Sequence[CovarianceAccumulator | torch.Tensor]) -> list[Spectrum | torch.Tensor]:
    """Solve the spectra of many accumulators and/or (d, d) symmetric matrices, batched.

    Matrices of equal ``(d, device, dtype)`` are stacked and solved in one ``eigvalsh`` call on
    their device; each accumulator contributes two matrices (its covariance and its uncentred
    Gram matrix ``Z^T Z``, for RankMe).

    Args:
        items: accumulators (each becomes a :class:`Spectrum`) or symmetric (d, d) tensors (each
            becomes a (d,) tensor of eigenvalues, descending, negatives clamped to 0).

    Returns:
        One result per item, in order.

    >>> c = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    >>> [values.tolist() for values in solve_spectra([c, 2 * c])]
    [[4.0, 1.0], [8.0, 2.0]]
    """
    matrices: list[torch.Tensor] = []
    owners: list[tuple[int, str]] = []
    checked: dict[int, tuple[int, int]] = {}
    variances: dict[int, torch.Tensor] = {}
    for index, item in enumerate(items):
        if isinstance(item, CovarianceAccumulator):
            checked[index] = item._finalize_checks()
            covariance, gram = item.matrices()
            variances[index] = torch.diagonal(covariance)
            matrices += [covariance, gram]
            owners += [(index, "covariance"), (index, "gram")]
        elif isinstance(item, torch.Tensor):
            _check_square(item, index)
            matrices.append(item)
            owners.append((index, "matrix"))
        else:
            raise CollapseProbeError(f"item {index}: expected a CovarianceAccumulator or a tensor, got {type(item).__name__}")

    groups: dict[tuple, list[int]] = defaultdict(list)
    for position, matrix in enumerate(matrices):
        groups[(matrix.shape[-1], matrix.device, matrix.dtype)].append(position)
    eigenvalues: list[torch.Tensor | None] = [None] * len(matrices)
    for positions in groups.values():
        stacked = torch.stack([matrices[p] for p in positions])
        with single_threaded(stacked.device.type == "cpu" and stacked.shape[-1] <= SINGLE_THREAD_MAX_DIM):
            solved = cpf.symmetric_eigenvalues(stacked)
        for p, values in zip(positions, solved, strict=True):
            eigenvalues[p] = values

    parts: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for (index, kind), values in zip(owners, eigenvalues, strict=True):
        parts[index][kind] = values
    results: list[Spectrum | torch.Tensor] = []
    for index, item in enumerate(items):
        if isinstance(item, CovarianceAccumulator):
            count, nonfinite = checked[index]
            results.append(_spectrum_from(item, parts[index], variances[index], count, nonfinite))
        else:
            results.append(parts[index]["matrix"])
    return results


def _spectrum_from(
    acc: CovarianceAccumulator, parts: dict[str, torch.Tensor], variances: torch.Tensor, count: int, nonfinite: int
) -> Spectrum:
    return Spectrum(
        eigenvalues=parts["covariance"].to(device="cpu", dtype=torch.float64),
        uncentered_singular_values=parts["gram"].to(device="cpu", dtype=torch.float64).sqrt(),
        mean=acc.mean.to(device="cpu", dtype=torch.float64),
        variances=variances.to(device="cpu", dtype=torch.float64),
        n_samples=count,
        center=acc.center,
        normalize=acc.normalize,
        ddof=acc.ddof,
        dtype=str(acc.dtype).removeprefix("torch."),
        input_dtype=str(acc.input_dtype or acc.dtype).removeprefix("torch."),
        layer=acc.layer,
        n_skipped_nonfinite=nonfinite if acc.skip_nonfinite else 0,
    )
