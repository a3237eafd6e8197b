"""Eigen-solves of many spectra: batched on a GPU, one at a time in bounded memory on a CPU.

``eigvalsh`` (not ``svdvals``): the covariance is symmetric PSD, its eigenvalues are its singular
values, and the symmetric solver is an order of magnitude cheaper (PAPER.md; docs/benchmarks.md).

On a GPU, matrices of equal ``(d, dtype)`` are stacked and solved in one call (batched solves
pay there). On a CPU a batched solve is no faster than a loop (measured: 0.97-1.03x,
docs/benchmarks.md) while stacking k matrices costs k extra copies, so each is solved in turn
and at most three d x d matrices are alive at once (``collapse_probe.functional.moments``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from collapse_probe._utils.threads import single_threaded
from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional.moments import (
    Moments,
    check_moments,
    gram_lower,
    lower_eigenvalues,
    solve_moments,
)
from collapse_probe.results.spectrum import Spectrum

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


def _as_solvable(item: Any, index: int) -> Moments | torch.Tensor:
    """Moments or a matrix; anything with ``finalize()`` (an accumulator) is finalised first."""
    if isinstance(item, (Moments, torch.Tensor)):
        return item
    finalize = getattr(item, "finalize", None)
    if callable(finalize):
        return finalize()
    raise CollapseProbeError(f"item {index}: expected Moments, a CovarianceAccumulator or a tensor, got {type(item).__name__}")


def _one_thread_on_cpu(device: torch.device, dim: int) -> Any:
    return single_threaded(device.type == "cpu" and dim <= SINGLE_THREAD_MAX_DIM)


def _solve_stacked(items: list[Moments | torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """GPU path: every matrix of equal (d, device, dtype) in one ``eigvalsh`` call."""
    matrices: list[torch.Tensor] = []
    owners: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        if isinstance(item, Moments):
            matrices += [item.m2, gram_lower(item)]
            owners += [(index, "m2"), (index, "gram")]
        else:
            matrices.append(item)
            owners.append((index, "matrix"))
    groups: dict[tuple, list[int]] = defaultdict(list)
    for position, matrix in enumerate(matrices):
        groups[(matrix.shape[-1], matrix.device, matrix.dtype)].append(position)
    solved: list[torch.Tensor | None] = [None] * len(matrices)
    for positions in groups.values():
        values = lower_eigenvalues(torch.stack([matrices[p] for p in positions]))
        for p, row in zip(positions, values, strict=True):
            solved[p] = row
    parts: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for (index, kind), values in zip(owners, solved, strict=True):
        parts[index][kind] = values
    results: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for index, item in enumerate(items):
        if isinstance(item, Moments):
            gram = parts[index]["gram"]
            values = parts[index]["m2"] if item.center else gram
            results.append((values / (item.count - item.ddof), gram.sqrt()))
        else:
            results.append((parts[index]["matrix"], None))
    return results


def _solve_sequential(items: list[Moments | torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """CPU path: one matrix at a time, so peak memory does not grow with the number of layers."""
    results: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for item in items:
        matrix = item.m2 if isinstance(item, Moments) else item
        with _one_thread_on_cpu(matrix.device, matrix.shape[-1]):
            if isinstance(item, Moments):
                results.append(solve_moments(item))
            else:
                results.append((lower_eigenvalues(item), None))
    return results


def solve_spectra(items: Sequence[Any]) -> list[Spectrum | torch.Tensor]:
    """Solve the spectra of many accumulators / :class:`Moments` and/or (d, d) symmetric matrices.

    Args:
        items: :class:`~collapse_probe.functional.moments.Moments`, anything with a ``finalize()`` that
            returns them (a ``CovarianceAccumulator``), each becoming a :class:`Spectrum`; or
            symmetric (d, d) tensors, each becoming a (d,) tensor of eigenvalues (descending,
            negatives clamped to 0; the lower triangle is read).

    Returns:
        One result per item, in order.

    >>> c = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    >>> [values.tolist() for values in solve_spectra([c, 2 * c])]
    [[4.0, 1.0], [8.0, 2.0]]
    """
    solvable = [_as_solvable(item, index) for index, item in enumerate(items)]
    for index, item in enumerate(solvable):
        if isinstance(item, Moments):
            check_moments(item)
        else:
            _check_square(item, index)
    on_gpu = any((item.m2 if isinstance(item, Moments) else item).device.type != "cpu" for item in solvable)
    solved = _solve_stacked(solvable) if on_gpu else _solve_sequential(solvable)
    results: list[Spectrum | torch.Tensor] = []
    for item, (values, singular_values) in zip(solvable, solved, strict=True):
        if isinstance(item, Moments):
            results.append(Spectrum.from_moments(item, eigenvalues=values, uncentered_singular_values=singular_values))
        else:
            results.append(values)
    return results
