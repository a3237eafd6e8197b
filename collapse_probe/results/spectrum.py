"""Spectrum: the immutable result of a probe, its metrics, and its JSON / pandas forms.

The JSON document and the table live in :mod:`collapse_probe.results.frame`; :func:`to_frame`,
:func:`json_safe` and :func:`read_json_file` are re-exported here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional import metrics as cpf
from collapse_probe.functional.moments import (
    Moments,
    check_moments,
    embedding_moments,
    solve_moments,
)
from collapse_probe.results.frame import (
    FORMAT,
    conventions_row,
    json_safe,
    metrics_row,
    read_json_file,
    spectrum_document,
    spectrum_fields,
    to_frame,
    write_json_atomically,
)

__all__ = ["FORMAT", "Spectrum", "json_safe", "read_json_file", "to_frame"]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The covariance spectrum of one layer's embeddings, with the conventions that produced it.

    Attributes:
        eigenvalues: (d,) float64, descending, >= 0: eigenvalues of ``C = M2 / (n - ddof)`` (the
            "singular values of the covariance" the paper plots). With ``center=False``, of the
            raw second moment ``Z^T Z / (n - ddof)`` instead.
        uncentered_singular_values: (d,) float64, descending: singular values of the uncentred
            (N, d) embedding matrix, ``sqrt(eig(Z^T Z))`` (what RankMe uses).
        mean: (d,) float64 mean embedding (after L2-normalisation when ``normalize``).
        variances: (d,) float64 diagonal of the covariance (per-dimension variance).
        n_samples: N, the number of rows accumulated (after dropping non-finite rows).
        center / normalize / ddof: the conventions used.
        dtype: accumulation dtype; ``input_dtype``: the least precise embedding dtype seen.
        layer: the probed module's name (``None`` for the model output).
        n_skipped_nonfinite: rows dropped for NaN/Inf (only with ``skip_nonfinite=True``).
        unit_variances: (d,) float64 per-dimension variance (divisor N - 1) of the L2-normalised
            rows ``z / ||z||``, tracked whatever ``normalize`` says; ``None`` in files written
            before it existed.
        stderr: metric name -> delete-a-group jackknife standard error (``spectrum(..., groups=K)``,
            :class:`~collapse_probe.metrics.grouped.GroupedAccumulator`); empty without groups.

    >>> z = torch.randn(1000, 8, dtype=torch.float64) @ torch.diag(torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    >>> s = Spectrum.from_embeddings(z)
    >>> s.dim, s.n_samples, s.collapsed_dims()
    (8, 1000, 4)
    """

    eigenvalues: torch.Tensor
    uncentered_singular_values: torch.Tensor
    mean: torch.Tensor
    variances: torch.Tensor
    n_samples: int
    center: bool = True
    normalize: bool = False
    ddof: int = 1
    dtype: str = "float64"
    input_dtype: str = "float32"
    layer: str | None = None
    n_skipped_nonfinite: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    unit_variances: torch.Tensor | None = None
    stderr: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """d, the embedding dimension."""
        return int(self.eigenvalues.numel())

    @property
    def max_rank(self) -> int:
        """The most non-zero eigenvalues N samples can show: ``min(d, N - 1)`` centred, ``min(d, N)`` not.

        N centred rows sum to zero, so they span at most N - 1 directions; N uncentred rows at most
        N (``ddof`` only divides). The other ``d - max_rank`` are zero whatever the model does.
        """
        return max(0, min(self.dim, self.n_samples - int(self.center)))

    @property
    def sample_limited(self) -> bool:
        """True when ``max_rank < d``: N samples cannot show every dimension (``unobserved_dims > 0``)."""
        return self.max_rank < self.dim

    @property
    def rank_limited_by_samples(self) -> bool:
        """Alias of :attr:`sample_limited` (its former name)."""
        return self.sample_limited

    @property
    def unobserved_dims(self) -> int:
        """``d - max_rank``: dimensions N samples cannot show; counted neither as collapsed nor as healthy."""
        return self.dim - self.max_rank

    @property
    def samples_needed(self) -> int:
        """The fewest samples that can show all d dimensions: ``d + 1`` centred, ``d`` uncentred."""
        return self.dim + int(self.center)

    @property
    def observed_eigenvalues(self) -> torch.Tensor:
        """(max_rank,) the top ``max_rank`` eigenvalues: the ones the samples can show (the metrics use these)."""
        return self.eigenvalues[: self.max_rank]

    @property
    def singular_values(self) -> torch.Tensor:
        """(d,) singular values of the (centred, if ``center``) embedding matrix: ``sqrt((N - ddof) * lambda)``."""
        return torch.sqrt(self.eigenvalues * (self.n_samples - self.ddof))

    @property
    def _top(self) -> float:
        return float(self.eigenvalues.max()) if self.dim else 0.0

    def _input_torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.input_dtype, None)
        return dtype if isinstance(dtype, torch.dtype) else torch.float32

    # ----------------------------------------------------------- metrics
    @cached_property
    def effective_rank(self) -> float:
        """Effective rank (Roy & Vetterli 2007) of the singular values of the embedding matrix.

        ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum_j s_j``, ``s_k = sqrt(lambda_k)`` (the
        centred embedding matrix when ``center``). Between 1 and d; a healthy isotropic
        embedding scores near d; k equal directions score k. Applying the same entropy to the
        eigenvalues ``lambda_k`` instead (some peers do) gives a smaller number: see
        docs/metrics.md. Over the ``max_rank`` eigenvalues the samples can show (the others are
        zero but for round-off), so at most ``max_rank``.
        """
        return cpf.effective_rank(torch.sqrt(self.observed_eigenvalues))

    @cached_property
    def rankme(self) -> float:
        """RankMe (Garrido et al., ICML 2023), exactly as published.

        ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / ||s||_1 + 1e-7``, ``s`` the singular values of
        the *uncentred* (N, d) embedding matrix (``uncentered_singular_values``; recovered
        exactly from the streamed moments as ``Z^T Z = M2 + N mu mu^T``). An (N, d) matrix has
        ``min(N, d)`` singular values: only those enter (and get the eps), as with
        ``torch.linalg.svdvals(z)``. The authors use 25,600 samples; more samples change it little
        once N >> d (docs/metrics.md measures how many it needs).
        """
        return cpf.rankme(self.uncentered_singular_values[: min(self.n_samples, self.dim)])

    def rankme_with_eps(self, eps: float = cpf.RANKME_EPS) -> float:
        """RankMe with another epsilon: :attr:`rankme` is ``rankme_with_eps(1e-7)`` (Garrido et al.).

        stable-pretraining's ``RankMe`` callback adds ``1e-5`` (``rankme_with_eps(1e-5)``); the
        eps is added to each of the ``min(N, d)`` normalised singular values, so a larger eps
        raises a collapsed embedding's score (by about ``d * eps * (1 - log(eps))`` in entropy).
        """
        return cpf.rankme(self.uncentered_singular_values[: min(self.n_samples, self.dim)], eps=eps)

    def effective_rank_of_eigenvalues(self, eps: float = cpf.RANKME_EPS) -> float:
        """The entropy rank of the covariance *eigenvalues*, as reptrix 0.1.0 reports "rankme".

        ``exp(-sum_k p_k log p_k)``, ``p_k = lambda_k / sum_j lambda_j + eps`` over the ``min(N, d)``
        eigenvalues (reptrix's PCA components, eps 1e-7 on each), the centred covariance when
        ``center``. Neither :attr:`rankme` nor :attr:`effective_rank`: the squares sharpen the
        distribution, so it is lower (3.7x on all-MiniLM-L6-v2, docs/metrics.md). ``eps=0``: the
        plain entropy.
        """
        return cpf.effective_rank_of_eigenvalues(self.eigenvalues[: min(self.n_samples, self.dim)], eps=eps)

    @cached_property
    def stable_rank(self) -> float:
        """``sum(lambda) / max(lambda)`` of the covariance eigenvalues."""
        return cpf.stable_rank(self.observed_eigenvalues)

    @cached_property
    def participation_ratio(self) -> float:
        """``(sum lambda)^2 / sum(lambda^2)`` of the covariance eigenvalues."""
        return cpf.participation_ratio(self.observed_eigenvalues)

    # ------------------------------------ numerically zero: the one definition (docs/metrics.md)
    @cached_property
    def mean_square(self) -> float:
        """``mean_ij z_ij^2`` of the embeddings (normalised when ``normalize``), mean included, from the moments."""
        second = self.variances * ((self.n_samples - self.ddof) / max(self.n_samples, 1))  # E[z_j^2] uncentred
        if self.center:
            second = second + self.mean.to(second.dtype) ** 2
        return float(second.mean()) if second.numel() else 0.0

    def default_rtol(self) -> float:
        """``max(1.19e-7, u^2 mean_square (1 + sqrt(d / N))^2 / lambda_1)``, u the unit roundoff of ``input_dtype``.

        The most variance rounding the embeddings to their dtype can add to a direction, relative
        to the largest eigenvalue (``functional.metrics.default_rtol``); 1.19e-7 for float32/64.
        """
        return cpf.default_rtol(self.dim, self._input_torch_dtype(), n_samples=self.n_samples,
                                mean_square=self.mean_square, top=self._top)

    def collapse_threshold(self, rtol: float | None = None) -> float:
        """``rtol * lambda_1``: eigenvalues at or below it are numerically zero (collapsed); plots draw them at it."""
        return (self.default_rtol() if rtol is None else rtol) * self._top

    def numerical_rank(self, rtol: float | None = None) -> int:
        """Eigenvalues above ``rtol * lambda_1`` (:meth:`collapse_threshold`) among the ``max_rank`` the samples show.

        Default ``rtol``: :meth:`default_rtol`. At most ``max_rank``: the ``unobserved_dims``
        beyond it are zero but for round-off.
        """
        return cpf.numerical_rank(self.observed_eigenvalues, self.default_rtol() if rtol is None else rtol)

    def collapsed_dims(self, rtol: float | None = None) -> int:
        """``max_rank - numerical_rank(rtol)``: the dimensions the samples show at or below :meth:`collapse_threshold`.

        The count the table, JSON, plots, monitor, loggers and ``check`` report. The
        ``unobserved_dims = d - max_rank`` dimensions that N samples cannot show (N - 1 < d
        centred) are not counted: ``collapsed_dims + numerical_rank + unobserved_dims = d``.
        """
        return self.max_rank - self.numerical_rank(rtol)

    def collapsed_fraction(self, rtol: float | None = None) -> float:
        """``collapsed_dims / max_rank``: the collapsed share of the dimensions the samples show (= / d when N > d)."""
        return self.collapsed_dims(rtol) / self.max_rank if self.max_rank else math.nan

    def alpha_req(self, fit_range: tuple[int, int] | None = None) -> cpf.PowerLawFit:
        """alpha-ReQ (Agrawal et al. 2022): power-law slope of ``lambda_i ~ i^-alpha`` with its R^2.

        ``fit_range`` is 1-based and inclusive; the default fits ranks 1 .. numerical_rank(), so the
        numerically-zero tail does not dominate the fit. Returns NaNs when fewer than two
        eigenvalues are non-zero. The same as ``power_law(fit_range)``.
        """
        return self.power_law(fit_range)

    def power_law(self, fit_range: tuple[int, int] | None = None, weighting: str = "none", *,
                  ranks: tuple[int, int] | None = None) -> cpf.PowerLawFit:
        """Power-law fit ``lambda_i ~ i^-alpha`` of the eigenvalues, in either field convention.

        * ``power_law()`` (= :meth:`alpha_req`): ordinary least squares of ``log lambda_i`` on
          ``log i`` over ranks 1 .. ``numerical_rank()``;
        * ``power_law(fit_range=(11, 100), weighting="inverse_rank")``: the alpha-ReQ authors' code
          and reptrix's ``get_alpha``: weighted least squares with weights ``1 / i`` over ranks
          11..100 (needs d >= 100). The two differ a lot on real embeddings (docs/metrics.md).

        ``fit_range`` is 1-based and inclusive (``ranks=``, its former name, still works and warns).
        With the default range, NaNs when fewer than two eigenvalues are non-zero; an explicit range
        that cannot be fitted raises.
        """
        if ranks is not None:
            if fit_range is not None:
                raise CollapseProbeError("power_law: give fit_range only (ranks is its deprecated name)")
            warnings.warn("power_law(ranks=...) is deprecated: use fit_range=", DeprecationWarning, stacklevel=2)
            fit_range = ranks
        if fit_range is None:
            fit_range = (1, self.numerical_rank())
            if fit_range[1] < 2:
                return cpf.PowerLawFit(math.nan, math.nan, math.nan, *fit_range)
        try:
            return cpf.power_law_fit(self.eigenvalues, fit_range, weighting=weighting)
        except ValueError as error:
            raise CollapseProbeError(str(error)) from None

    @property
    def std_of_l2_normalized(self) -> float | None:
        """Mean per-dimension std of L2-normalised embeddings (~1/sqrt(d) healthy, 0 collapsed).

        ``mean_j std_j(z / ||z||)``, std with divisor N - 1: lightly's ``std_of_l2_normalized``
        on the raw embeddings, whatever ``normalize`` and ``center`` say (the accumulator tracks the
        normalised rows' per-dimension moments alongside, O(d)). Spectrum files written before
        that was tracked give it only when ``normalize=True`` and ``center=True``, else ``None``.
        """
        if self.unit_variances is not None:
            return cpf.mean_std_of_normalized(self.unit_variances)
        if not (self.normalize and self.center):
            return None
        return cpf.mean_std_of_normalized(self.variances)

    def metrics(self) -> dict[str, Any]:
        """Every scalar metric, with default settings, as a flat dict (the JSON/CSV row; ``frame.metrics_row``)."""
        return metrics_row(self)

    def conventions(self) -> dict[str, Any]:
        """How the numbers were computed: centring, normalisation, ddof, dtypes, what eigenvalues mean."""
        return conventions_row(self)

    # ------------------------------------------------------ conversions
    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame of :meth:`metrics` plus the conventions."""
        return pd.DataFrame([{**self.metrics(), **self.conventions()}])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: format tag, conventions, metrics and every eigenvalue (exact floats)."""
        return spectrum_document(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spectrum:
        """Inverse of :meth:`to_dict`; a clear error for anything else."""
        return cls(**spectrum_fields(data))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (written to a temporary file, then renamed)."""
        return write_json_atomically(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Spectrum:
        """Read a spectrum JSON written by :meth:`save`."""
        path = Path(path)
        data = read_json_file(path)
        try:
            return cls.from_dict(data)
        except KeyError as error:
            raise CollapseProbeError(f"{path}: spectrum JSON lacks the field {error}") from None

    @classmethod
    def from_moments(
        cls,
        moments: Moments,
        *,
        eigenvalues: torch.Tensor | None = None,
        uncentered_singular_values: torch.Tensor | None = None,
        extra: Mapping[str, Any] | None = None,
        stderr: Mapping[str, float] | None = None,
    ) -> Spectrum:
        """The spectrum of finalised :class:`~collapse_probe.functional.moments.Moments`.

        ``eigenvalues`` / ``uncentered_singular_values`` are taken as solved when given (the
        batched ``solve_spectra`` path); otherwise the moments are checked and solved here.
        """
        if eigenvalues is None or uncentered_singular_values is None:
            check_moments(moments)
            eigenvalues, uncentered_singular_values = solve_moments(moments)
        # copies: the moments may be an accumulator's live state, updated after this returns
        as_cpu = dict(device="cpu", dtype=torch.float64, copy=True)
        return cls(
            eigenvalues=eigenvalues.to(**as_cpu), uncentered_singular_values=uncentered_singular_values.to(**as_cpu),
            mean=moments.mean.to(**as_cpu), variances=moments.variances().to(**as_cpu), n_samples=moments.count,
            center=moments.center, normalize=moments.normalize, ddof=moments.ddof, dtype=moments.dtype,
            input_dtype=moments.input_dtype, layer=moments.layer, n_skipped_nonfinite=moments.n_skipped_nonfinite,
            extra=dict(extra or {}), stderr=dict(stderr or {}),
            unit_variances=None if moments.unit_m2 is None else moments.unit_variances().to(**as_cpu),
        )

    @classmethod
    def from_embeddings(
        cls,
        embeddings: torch.Tensor | np.ndarray,
        *,
        center: bool = True,
        normalize: bool = False,
        ddof: int | None = None,
        layer: str | None = None,
        skip_nonfinite: bool = False,
        chunk_size: int = 8192,
    ) -> Spectrum:
        """The spectrum of an in-memory (N, d) array: float64 two-pass moments per chunk, Chan-merged.

        Same result as streaming the rows through a ``CovarianceAccumulator``, by an independent
        path (``functional.moments.embedding_moments``); ``input_dtype`` is the array's dtype.
        """
        z = torch.as_tensor(embeddings) if isinstance(embeddings, np.ndarray) else embeddings
        moments = embedding_moments(z, center=center, normalize=normalize, ddof=ddof, layer=layer,
                                    skip_nonfinite=skip_nonfinite, chunk_size=chunk_size)
        return cls.from_moments(moments)

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        """Sorted log eigenvalues against index, as in the paper; returns the matplotlib Axes."""
        from collapse_probe.results.plot import plot_spectra

        return plot_spectra({label or self.layer or "output": self}, ax=ax)

    def __repr__(self) -> str:
        return (
            f"Spectrum(layer={self.layer!r}, dim={self.dim}, n_samples={self.n_samples}, "
            f"effective_rank={self.effective_rank:.2f}, rankme={self.rankme:.2f}, "
            f"collapsed_dims={self.collapsed_dims()}"
            + (f", unobserved_dims={self.unobserved_dims}" if self.sample_limited else "")
            + ")"
        )

