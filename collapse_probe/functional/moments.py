"""Moments: per-batch moments and their parallel merge, the finalised :class:`Moments`, and their eigen-solve.

The one hand-off between accumulating and solving: :class:`~collapse_probe.metrics.covariance.CovarianceAccumulator`
(streaming, on the model's device) and :meth:`~collapse_probe.results.spectrum.Spectrum.from_embeddings`
(an in-memory array) both produce a :class:`Moments`; ``solve_spectra`` and
``Spectrum.from_moments`` turn it into eigenvalues. Only the *lower triangle* of ``m2`` is read,
so a producer that fills only that half (the CPU block-triangular update) never has to copy it.

Memory: solving one :class:`Moments` holds at most three d x d matrices at once -- ``m2`` itself,
one working copy (the Gram matrix, built in place) and the solver's copy of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError


def batch_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and centred second moment of one batch (two-pass, in ``z``'s dtype).

    Args:
        z: (B, d) floating tensor.

    Returns:
        ``(n, mean, m2)``: n a 0-d tensor, mean (d,), ``m2 = (z - mean)^T (z - mean)`` (d, d).

    >>> n, mean, m2 = batch_moments(torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64))
    >>> int(n), mean.tolist(), m2.tolist()
    (2, [2.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    n = torch.tensor(float(z.shape[0]), dtype=z.dtype, device=z.device)
    mean = z.mean(dim=0)
    centred = z - mean
    return n, mean, centred.T @ centred


def merge_moments(
    n_a: torch.Tensor,
    mean_a: torch.Tensor,
    m2_a: torch.Tensor,
    n_b: torch.Tensor,
    mean_b: torch.Tensor,
    m2_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parallel (Chan, Golub & LeVeque 1979) merge of two sets of moments.

    ``n = n_a + n_b``; ``delta = mean_b - mean_a``; ``mean = mean_a + delta * n_b / n``;
    ``M2 = M2_a + M2_b + delta delta^T * n_a n_b / n``. Exact in real arithmetic and, unlike
    ``E[zz^T] - mu mu^T``, free of cancellation when the mean is large against the spread.
    Empty sides (n = 0) are handled without a host sync. Per-dimension moments (``m2`` of shape
    (d,), the diagonal only) merge by the diagonal of the same formula, ``delta^2 n_a n_b / n``: O(d).

    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> n, mean, m2 = merge_moments(one, torch.tensor([1.0]).double(), torch.zeros(1, 1).double(),
    ...                             one, torch.tensor([3.0]).double(), torch.zeros(1, 1).double())
    >>> int(n), mean.tolist(), m2.tolist()
    (2, [2.0], [[2.0]])
    """
    n = n_a + n_b
    safe_n = torch.clamp(n, min=1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / safe_n)
    spread = torch.outer(delta, delta) if m2_a.ndim == 2 else delta * delta
    m2 = m2_a + m2_b + spread * (n_a * n_b / safe_n)
    return n, mean, m2


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred second moment of N embeddings, with the conventions that made them.

    Attributes:
        count: N, the rows accumulated (after dropping non-finite rows).
        mean: (d,) mean of the rows (after L2-normalisation when ``normalize``).
        m2: (d, d) ``sum_i (z_i - mean)(z_i - mean)^T``; only its lower triangle is read.
        center / normalize / ddof: the conventions (``C = M2 / (N - ddof)`` when centred, else
            ``Z^T Z / (N - ddof)``).
        dtype: the accumulation dtype name; ``input_dtype``: the least precise embedding dtype seen.
        layer: the probed module's name (``None`` for the model output).
        n_skipped_nonfinite: rows dropped for NaN/Inf (``skip_nonfinite=True``).
        unit_mean / unit_m2: (d,) mean and centred sum of squares, per dimension, of the
            L2-normalised rows ``z / ||z||`` whatever ``normalize`` says (lightly's
            ``std_of_l2_normalized``); ``None`` when not tracked.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    center: bool = True
    normalize: bool = False
    ddof: int = 1
    dtype: str = "float64"
    input_dtype: str = "float64"
    layer: str | None = None
    n_skipped_nonfinite: int = 0
    unit_mean: torch.Tensor | None = None
    unit_m2: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @property
    def where(self) -> str:
        """``layer 'name'`` or ``the model output``: how messages name these moments."""
        return f"layer {self.layer!r}" if self.layer else "the model output"

    def variances(self) -> torch.Tensor:
        """(d,) diagonal of the covariance (or of the second moment when not centred)."""
        diagonal = torch.diagonal(self.m2)
        if not self.center:
            diagonal = diagonal + self.mean * self.mean * self.count
        return diagonal / (self.count - self.ddof)

    def unit_variances(self) -> torch.Tensor | None:
        """(d,) per-dimension variance of the L2-normalised rows, divisor N - 1 (``torch.std``'s); None if untracked."""
        if self.unit_m2 is None:
            return None
        return self.unit_m2 / max(self.count - 1, 1)


def check_moments(moments: Moments) -> None:
    """Refuse moments that cannot give a trustworthy spectrum.

    * fewer than two rows: no covariance;
    * non-finite statistics from finite input: the second moment overflowed float64
      (embeddings beyond about 1e154 in magnitude); the numbers cannot be represented.
    """
    if moments.count < 2:
        raise CollapseProbeError(f"need at least 2 finite samples for a covariance of {moments.where}, got {moments.count}")
    # |M2_ij| <= sqrt(M2_ii M2_jj) and every eigenvalue <= the trace: a finite trace of the Gram
    # matrix (>= that of M2) means every entry and eigenvalue is finite, at O(d) cost.
    trace = torch.diagonal(moments.m2).sum() + moments.count * moments.mean.square().sum()
    if not bool(torch.isfinite(trace)):
        raise CollapseProbeError(
            f"the second moment of {moments.where} overflows {moments.dtype} although every embedding is finite "
            "(values beyond about 1e154 in magnitude); rescale the embeddings: the spectrum's shape does not change"
        )


def gram_lower(moments: Moments) -> torch.Tensor:
    """``Z^T Z = M2 + N mean mean^T`` (d, d), built in one new matrix (lower triangle exact).

    A sum of two PSD terms, so no cancellation; its eigenvalues are the squared singular values
    of the uncentred (N, d) embedding matrix that RankMe uses.

    >>> m = embedding_moments(torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64))
    >>> torch.tril(gram_lower(m)).tolist()  # [[1 + 9, .], [0 + 6, 0 + 4]]
    [[10.0, 0.0], [6.0, 4.0]]
    """
    gram = moments.m2.clone()
    gram.addr_(moments.mean, moments.mean, alpha=float(moments.count))
    return gram


def lower_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the symmetric matrix whose lower triangle ``matrix`` holds (..., d, d).

    Descending, round-off negatives clamped to 0; one ``eigvalsh(UPLO="L")`` call for a stack.

    >>> lower_eigenvalues(torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))).tolist()
    [3.0, 2.0, 1.0]
    """
    return torch.flip(torch.linalg.eigvalsh(matrix, UPLO="L"), dims=(-1,)).clamp_min(0.0)


def solve_moments(moments: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues, uncentred singular values)`` of one :class:`Moments`, sequentially.

    eigenvalues: (d,) of ``C = M2 / (N - ddof)`` (of ``Z^T Z / (N - ddof)`` when not centred),
    descending; singular values: (d,) ``sqrt(eig(Z^T Z))``. The Gram matrix is built after the
    covariance solve has released its copy, so at most three d x d matrices live at once.
    """
    scale = moments.count - moments.ddof
    gram_values = lower_eigenvalues(gram_lower(moments))
    if moments.center:
        values = lower_eigenvalues(moments.m2) / scale
    else:
        values = gram_values / scale
    return values, gram_values.sqrt()


def embedding_moments(
    z: torch.Tensor,
    *,
    center: bool = True,
    normalize: bool = False,
    ddof: int | None = None,
    layer: str | None = None,
    skip_nonfinite: bool = False,
    chunk_size: int = 8192,
) -> Moments:
    """:class:`Moments` of an in-memory (N, d) tensor: two-pass per chunk in float64, Chan-merged.

    Independent of the streaming accumulator (plain :func:`batch_moments` + :func:`merge_moments`), so the two paths check each other in the tests.

    >>> m = embedding_moments(torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 1.0]]))
    >>> m.count, m.mean.tolist(), torch.tril(m.m2).tolist()
    (3, [2.0, 1.0], [[2.0, 0.0], [2.0, 2.0]])
    """
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise CollapseProbeError(f"embeddings must be an (N, d) array, got shape {tuple(getattr(z, 'shape', ()))}")
    if not z.is_floating_point():
        raise CollapseProbeError(f"embeddings must be floating point, got {z.dtype}")
    dim = z.shape[1]
    n = torch.zeros((), dtype=torch.float64, device=z.device)
    mean = torch.zeros(dim, dtype=torch.float64, device=z.device)
    m2 = torch.zeros(dim, dim, dtype=torch.float64, device=z.device)
    unit_mean = torch.zeros(dim, dtype=torch.float64, device=z.device)
    unit_m2 = torch.zeros(dim, dtype=torch.float64, device=z.device)
    skipped = 0
    for start in range(0, z.shape[0], chunk_size):
        chunk = z[start : start + chunk_size].detach().to(torch.float64)
        finite = torch.isfinite(chunk).all(dim=1)
        if not bool(finite.all()):
            if not skip_nonfinite:
                where = f"layer {layer!r}" if layer else "the embeddings"
                first = start + int((~finite).nonzero()[0])
                raise NonFiniteEmbeddingError(f"non-finite values (NaN/Inf) in {where}, first in row {first}; "
                                              "pass skip_nonfinite=True (CLI: --skip-nonfinite) to drop such rows")
            skipped += int((~finite).sum())
            chunk = chunk[finite]
        if chunk.shape[0] == 0:
            continue
        unit = torch.nn.functional.normalize(chunk, dim=1)
        if normalize:
            chunk = unit
        unit_n = torch.tensor(float(unit.shape[0]), dtype=torch.float64, device=z.device)
        unit_centred = unit - unit.mean(dim=0)  # two-pass per chunk, as the covariance
        _, unit_mean, unit_m2 = merge_moments(n, unit_mean, unit_m2, unit_n, unit.mean(dim=0),
                                                  (unit_centred**2).sum(dim=0))
        n, mean, m2 = merge_moments(n, mean, m2, *batch_moments(chunk))
    return Moments(
        count=int(n), mean=mean, m2=m2, center=center, normalize=normalize,
        ddof=(1 if center else 0) if ddof is None else int(ddof), dtype="float64",
        input_dtype=str(z.dtype).removeprefix("torch."), layer=layer, n_skipped_nonfinite=skipped,
        unit_mean=unit_mean, unit_m2=unit_m2,
    )
