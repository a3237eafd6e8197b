"""Stage 2's pure maths on tensors, no state: moments and their merge, eigen-solves, every metric.

The accumulators of :mod:`collapse_probe.metrics` and :class:`~collapse_probe.results.spectrum.Spectrum`
call these same functions, so the batch and streaming paths share every formula.
"""

from collapse_probe.functional.metrics import (
    POWER_LAW_WEIGHTINGS,
    RANKME_EPS,
    PowerLawFit,
    batch_moments,
    covariance_from_moments,
    default_rtol,
    effective_rank,
    effective_rank_of_eigenvalues,
    jackknife_stderr,
    mean_std_of_normalized,
    merge_moments,
    numerical_rank,
    participation_ratio,
    power_law_fit,
    rankme,
    stable_rank,
    symmetric_eigenvalues,
    uncentred_gram,
)

__all__ = [
    "POWER_LAW_WEIGHTINGS",
    "PowerLawFit",
    "RANKME_EPS",
    "batch_moments",
    "covariance_from_moments",
    "default_rtol",
    "effective_rank",
    "effective_rank_of_eigenvalues",
    "jackknife_stderr",
    "mean_std_of_normalized",
    "merge_moments",
    "numerical_rank",
    "participation_ratio",
    "power_law_fit",
    "rankme",
    "stable_rank",
    "symmetric_eigenvalues",
    "uncentred_gram",
]
