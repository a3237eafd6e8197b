"""Stage 2's pure maths on tensors, no state: moments and their merge, eigen-solves, every metric.

:mod:`~collapse_probe.functional.moments` holds the moment maths (per-batch moments, the Chan
merge, the finalised :class:`~collapse_probe.functional.moments.Moments` and their eigen-solve);
:mod:`~collapse_probe.functional.metrics` holds the metrics and the one definition of
"numerically zero". The accumulators of :mod:`collapse_probe.metrics` and
:class:`~collapse_probe.results.spectrum.Spectrum` call these same functions, so the batch and
streaming paths share every formula.
"""

from collapse_probe.functional.metrics import (
    POWER_LAW_WEIGHTINGS,
    RANKME_EPS,
    PowerLawFit,
    default_rtol,
    effective_rank,
    effective_rank_of_eigenvalues,
    jackknife_stderr,
    mean_std_of_normalized,
    numerical_rank,
    participation_ratio,
    power_law_fit,
    rankme,
    stable_rank,
)
from collapse_probe.functional.moments import (
    Moments,
    batch_moments,
    embedding_moments,
    gram_lower,
    lower_eigenvalues,
    merge_moments,
)

__all__ = [
    "POWER_LAW_WEIGHTINGS",
    "Moments",
    "PowerLawFit",
    "RANKME_EPS",
    "batch_moments",
    "default_rtol",
    "effective_rank",
    "effective_rank_of_eigenvalues",
    "embedding_moments",
    "gram_lower",
    "jackknife_stderr",
    "lower_eigenvalues",
    "mean_std_of_normalized",
    "merge_moments",
    "numerical_rank",
    "participation_ratio",
    "power_law_fit",
    "rankme",
    "stable_rank",
]
