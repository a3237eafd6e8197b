"""Pure maths on tensors: every collapse metric, and the one definition of "numerically zero".

The moments, their merge and the eigen-solve live in :mod:`collapse_probe.functional.moments`.
Nothing here holds state; :class:`~collapse_probe.results.spectrum.Spectrum` and the accumulators
call these same functions, so the batch and the streaming paths share every formula (the
torchmetrics pattern).

Conventions used throughout:

* ``eigenvalues`` are the eigenvalues of the d x d covariance ``C = M2 / (n - ddof)``, sorted in
  descending order -- the paper's "singular values of the covariance" (C is symmetric PSD).
* ``singular values`` of an (N, d) embedding matrix are ``sqrt(eig(Z^T Z))``; for the centred
  matrix they are ``sqrt((n - ddof) * eigenvalues)``, a constant multiple of ``sqrt(eigenvalues)``,
  so every scale-free metric may use ``sqrt(eigenvalues)`` directly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

RANKME_EPS = 1e-7
"""Garrido et al. (2023) add this to every normalised singular value before the entropy."""


def _vector(values: torch.Tensor, what: str, function: str) -> torch.Tensor:
    """``values`` as a 1-D tensor; a clear ``ValueError`` for anything else (an (N, d) matrix above all).

    The metrics below take a spectrum (one value per direction), never the embeddings: summing an
    (N, d) matrix as if it were a spectrum returns a plausible, wrong number.
    """
    vector = torch.as_tensor(values)
    if vector.ndim != 1:
        hint = (" (an (N, d) embedding matrix? pass torch.linalg.svdvals(z), or use "
                "Spectrum.from_embeddings(z))") if vector.ndim == 2 else ""
        raise ValueError(f"{function} takes a 1-D vector of {what}, got shape {tuple(vector.shape)}{hint}")
    return vector


def _entropy_rank(p: torch.Tensor) -> float:
    """``exp(-sum p_k log p_k)`` with ``0 log 0 = 0``."""
    entropy = -torch.special.xlogy(p, p).sum()
    return float(torch.exp(entropy))


def effective_rank(singular_values: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))``, ``p_k = s_k / sum_j s_j``.

    Apply it to *singular values*, a 1-D vector (anything else raises ``ValueError``). For a
    covariance, pass ``sqrt(eigenvalues)`` (proportional to the singular values of the centred
    embedding matrix). k equal non-zero values give exactly k; a collapsed (all-zero) input gives 0.

    >>> effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0]))
    3.0...
    """
    singular_values = _vector(singular_values, "singular values", "effective_rank")
    total = singular_values.sum()
    if float(total) <= 0.0:
        return 0.0
    return _entropy_rank(singular_values / total)


def rankme(singular_values: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023): ``exp(-sum p_k log p_k)``, ``p_k = s_k / ||s||_1 + eps``.

    ``s`` are the ``min(N, d)`` singular values of the *uncentred* (N, d) embedding matrix, a 1-D
    vector, exactly what ``torch.linalg.svdvals(z)`` returns: the eps is added to each value
    passed, so padding ``s`` with the ``d - N`` zeros of an N < d matrix changes the result.
    The eps makes a rank-one input score slightly above 1 and keeps the log finite.

    >>> round(rankme(torch.tensor([1.0, 1.0, 0.0, 0.0])), 4)
    2.0
    """
    singular_values = _vector(singular_values, "singular values", "rankme")
    total = singular_values.sum()
    if float(total) <= 0.0:
        return 0.0
    p = singular_values / total + eps
    return _entropy_rank(p)


def stable_rank(eigenvalues: torch.Tensor) -> float:
    """Stable rank ``sum(lambda) / max(lambda)`` of covariance eigenvalues (= ||Z||_F^2 / ||Z||_2^2).

    >>> stable_rank(torch.tensor([4.0, 2.0, 2.0]))
    2.0
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "stable_rank")
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    return float(eigenvalues.sum()) / top if top > 0.0 else 0.0


def participation_ratio(eigenvalues: torch.Tensor) -> float:
    """Participation ratio ``(sum lambda)^2 / sum(lambda^2)`` (Gao et al. 2017 and neuroscience).

    >>> participation_ratio(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    3.0
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "participation_ratio")
    squares = float((eigenvalues**2).sum())
    return float(eigenvalues.sum()) ** 2 / squares if squares > 0.0 else 0.0


FLOAT32_RTOL = float(torch.finfo(torch.float32).eps)
"""The floor of the default rtol whatever the dtype: 2^-23 = 1.19e-7 of the largest eigenvalue."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: rounding to nearest in ``dtype`` moves a normal number x by at most ``u |x|``.

    0 for integer and bool dtypes (exact). bfloat16 2^-8, float16 2^-11, float32 2^-24.

    >>> unit_roundoff(torch.bfloat16), unit_roundoff(torch.float16), unit_roundoff(torch.int64)
    (0.00390625, 0.00048828125, 0.0)
    """
    return float(torch.finfo(dtype).eps) / 2 if dtype.is_floating_point else 0.0


def rounding_floor(input_dtype: torch.dtype, *, mean_square: float, dim: int, n_samples: int) -> float:
    """The most variance rounding N (d,)-embeddings to ``input_dtype`` adds to a direction they do not span.

    ``floor = u^2 (m + t^2) (1 + sqrt(d / N))^2``, ``u`` the unit roundoff, ``t`` the dtype's
    smallest normal number, ``m = mean_ij z_ij^2`` the mean squared entry. Each rounding error obeys
    ``|e_ij| <= u max(|z_ij|, t)`` (``t`` for float16's subnormals), so errors uncorrelated across
    coordinates add at most ``u^2 (m + t^2)`` of variance to a typical unit direction
    (one not concentrated on a few large coordinates); N samples of that noise spread its sample
    eigenvalues up to the Marchenko-Pastur edge, ``(1 + sqrt(d / N))^2`` times it. Measured:
    rank-deficient inputs rounded to bfloat16 / float16 put 0.15-0.6 of this into their null
    directions (docs/metrics.md, "The threshold for collapsed").

    >>> rounding_floor(torch.bfloat16, mean_square=1.0, dim=768, n_samples=3000) / 2.0**-16  # (1 + sqrt(0.256))^2
    2.2679...
    """
    u = unit_roundoff(input_dtype)
    if u == 0.0:
        return 0.0
    tiny = float(torch.finfo(input_dtype).smallest_normal)
    return u * u * (mean_square + tiny * tiny) * (1.0 + math.sqrt(dim / max(n_samples, 1))) ** 2


def default_rtol(dim: int, input_dtype: torch.dtype, *, n_samples: int, mean_square: float, top: float) -> float:
    """The default relative threshold for "numerically zero": the one definition the library uses.

    A covariance eigenvalue is numerically zero (its direction *collapsed*) when
    ``lambda_k <= rtol * lambda_1`` (:func:`numerically_zero`), with

    ``rtol = max(eps_float32, rounding_floor(input_dtype, mean_square, dim, n_samples) / lambda_1)``

    * :func:`rounding_floor`: what rounding the embeddings to their dtype alone puts into a
      direction the data do not span (it dominates for bfloat16 / float16 embeddings);
    * ``eps_float32 = 1.19e-7``: the floor whatever the dtype (float32 and float64 embeddings).

    Args:
        dim: d. input_dtype: the embeddings' (least precise) dtype. n_samples: N.
        mean_square: ``mean_ij z_ij^2`` of the (N, d) embeddings (after L2-normalisation when
            normalised; including the mean). top: ``lambda_1``, the largest eigenvalue.

    >>> default_rtol(768, torch.float32, n_samples=3000, mean_square=1.0, top=1.0)
    1.1920928955078125e-07
    >>> round(default_rtol(768, torch.bfloat16, n_samples=3000, mean_square=1.0, top=1.0), 8)
    3.461e-05
    """
    if top <= 0.0:
        return FLOAT32_RTOL
    floor = rounding_floor(input_dtype, mean_square=mean_square, dim=dim, n_samples=n_samples)
    return max(FLOAT32_RTOL, floor / top)


def numerically_zero(eigenvalues: torch.Tensor, rtol: float) -> torch.Tensor:
    """(d,) bool: ``lambda_k <= rtol * max(lambda)``, the eigenvalues counted as collapsed.

    All true when the largest is 0 (a constant embedding).

    >>> numerically_zero(torch.tensor([1.0, 1e-3, 1e-7, 0.0]), rtol=1e-7).tolist()
    [False, False, True, True]
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "numerically_zero")
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    return eigenvalues <= rtol * max(top, 0.0)


def numerical_rank(eigenvalues: torch.Tensor, rtol: float) -> int:
    """Number of eigenvalues strictly above ``rtol * max(eigenvalues)`` (not :func:`numerically_zero`).

    >>> numerical_rank(torch.tensor([1.0, 1e-3, 1e-12]), rtol=1e-7)
    2
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "numerical_rank")
    return int((~numerically_zero(eigenvalues, rtol)).sum())


class PowerLawFit(NamedTuple):
    """Least-squares fit ``log lambda_i = intercept - alpha * log i`` over ranks ``start..stop``."""

    alpha: float
    intercept: float
    r2: float
    start: int
    stop: int


POWER_LAW_WEIGHTINGS = ("none", "inverse_rank")


def power_law_fit(eigenvalues: torch.Tensor, fit_range: tuple[int, int], weighting: str = "none") -> PowerLawFit:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): slope of ``lambda_i ~ i^-alpha``.

    Args:
        eigenvalues: descending covariance eigenvalues (d,).
        fit_range: 1-based inclusive ranks ``(start, stop)``; must hold at least two positive
            eigenvalues (non-positive ones are left out of the fit).
        weighting: ``"none"``: ordinary least squares of ``log lambda_i`` on ``log i``;
            ``"inverse_rank"``: weighted least squares with weight ``1 / i`` on rank i, as the
            alpha-ReQ authors' code and reptrix's ``get_alpha`` fit it (after Stringer et al.
            2019), which reptrix applies to ranks 11..100 (``fit_range=(11, 100)``).

    Returns:
        :class:`PowerLawFit` with alpha (alpha ~ 1 correlates with good linear-probe accuracy;
        large alpha means a fast-decaying, collapsing spectrum) and the fit's R^2 (weighted by the
        same weights: ``1 - sum w r^2 / sum w (y - ybar_w)^2``).

    >>> ranks = torch.arange(1, 101, dtype=torch.float64)
    >>> fit = power_law_fit(ranks ** -1.5, (1, 100))
    >>> round(fit.alpha, 6), round(fit.r2, 6)
    (1.5, 1.0)
    >>> round(power_law_fit(ranks ** -1.5, (11, 100), weighting="inverse_rank").alpha, 6)
    1.5
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "power_law_fit")
    if weighting not in POWER_LAW_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(POWER_LAW_WEIGHTINGS)}, got {weighting!r}")
    start, stop = fit_range
    if not 1 <= start < stop <= eigenvalues.numel():
        raise ValueError(f"fit_range {fit_range} must satisfy 1 <= start < stop <= {eigenvalues.numel()}")
    values = eigenvalues[start - 1 : stop].to(torch.float64)
    ranks = torch.arange(start, stop + 1, dtype=torch.float64)
    positive = values > 0
    if int(positive.sum()) < 2:
        raise ValueError(f"fit_range {fit_range} holds fewer than two positive eigenvalues")
    x = torch.log(ranks[positive])
    y = torch.log(values[positive])
    w = 1.0 / ranks[positive] if weighting == "inverse_rank" else torch.ones_like(x)
    w = w / w.sum()
    x_centred = x - (w * x).sum()
    y_centred = y - (w * y).sum()
    slope = float((w * x_centred * y_centred).sum() / (w * x_centred**2).sum())
    intercept = float((w * y).sum() - slope * (w * x).sum())
    residual = y_centred - slope * x_centred
    total = float((w * y_centred**2).sum())
    r2 = 1.0 - float((w * residual**2).sum()) / total if total > 0 else 1.0
    return PowerLawFit(alpha=-slope, intercept=intercept, r2=r2, start=start, stop=stop)


def effective_rank_of_eigenvalues(eigenvalues: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """The entropy rank of the *eigenvalues*: ``exp(-sum p_k log p_k)``, ``p_k = lambda_k / sum_j lambda_j + eps``.

    What reptrix 0.1.0 reports as "rankme" (``get_rankme``: the centred covariance's
    eigenvalues, normalised, plus 1e-7). It is not Roy & Vetterli's effective rank of the
    singular values (:func:`effective_rank`, ``lambda = s^2``): squaring sharpens the
    distribution, so it is always lower, by up to several times on a decaying spectrum
    (docs/metrics.md measures it). ``eps=0`` gives the plain entropy of the eigenvalues.

    >>> round(effective_rank_of_eigenvalues(torch.tensor([4.0, 1.0, 1.0, 0.0]), eps=0.0), 4)
    2.3811
    """
    eigenvalues = _vector(eigenvalues, "eigenvalues", "effective_rank_of_eigenvalues")
    total = eigenvalues.sum()
    if float(total) <= 0.0:
        return 0.0
    return _entropy_rank(eigenvalues / total + eps)


def mean_std_of_normalized(variances: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised embeddings.

    ``mean_j sqrt(C_jj)`` with ``C`` the covariance of ``z / ||z||``; about ``1/sqrt(d)`` for a
    healthy isotropic embedding and 0 under complete collapse (Chen & He 2021, SimSiam).

    >>> round(mean_std_of_normalized(torch.full((4,), 0.25)), 3)
    0.5
    """
    variances = _vector(variances, "per-dimension variances", "mean_std_of_normalized")
    return float(torch.sqrt(variances.clamp_min(0.0)).mean())



def jackknife_stderr(leave_one_out: torch.Tensor) -> float:
    """Delete-a-group jackknife standard error from the K leave-one-group-out estimates.

    ``SE = sqrt((K - 1) / K * sum_k (theta_(k) - mean_k theta_(k))^2)`` (Efron & Stein 1981;
    Quenouille's jackknife with groups as the deleted units). NaN when K < 2 or an estimate is NaN.

    >>> round(jackknife_stderr(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)), 6)
    1.154701
    """
    values = _vector(leave_one_out, "leave-one-out estimates", "jackknife_stderr").to(torch.float64)
    k = values.numel()
    if k < 2:
        return float("nan")
    return float(torch.sqrt((k - 1) / k * ((values - values.mean()) ** 2).sum()))
