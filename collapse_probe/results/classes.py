"""Results with classes: per-class spectra beside the pooled one, and within/between-class scatter.

Neural-collapse statistics (Papyan, Han and Donoho, PNAS 2020), for N rows z_i in K classes with
class means mu_k (n_k rows each) and the global mean mu:

* within-class scatter  W = sum_k sum_{i in k} (z_i - mu_k)(z_i - mu_k)^T = T - B, with T the total
  centred scatter and B = sum_k n_k (mu_k - mu)(mu_k - mu)^T;
* Sigma_W = W / N and Sigma_B = (1/K) sum_k (mu_k - mu)(mu_k - mu)^T (Papyan et al.'s definitions);
* NC1 = tr(Sigma_W Sigma_B^+) / K, with ``^+`` the pseudo-inverse (eigenvalues of Sigma_B at or
  below 1e-12 x its largest treated as zero: Sigma_B has rank at most K - 1);
* the within-class covariance spectrum: eigenvalues of the pooled within-class covariance
  W / (N - K) (the unbiased pooled estimator); the between-class spectrum: eigenvalues of Sigma_B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional.moments import Moments
from collapse_probe.results.spectrum import Spectrum

PINV_RTOL = 1e-12


@dataclass(frozen=True)
class ClassScatter:
    """Within/between-class statistics of one layer (module docstring for every formula)."""

    n_classes: int
    n_samples: int
    nc1: float
    within_eigenvalues: torch.Tensor
    between_eigenvalues: torch.Tensor
    class_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "n_samples": self.n_samples,
                "nc1": None if math.isnan(self.nc1) else self.nc1,
                "within_eigenvalues": self.within_eigenvalues.tolist(),
                "between_eigenvalues": self.between_eigenvalues.tolist(), "class_counts": self.class_counts,
                "conventions": {"within": "W / (N - K), W = T - sum_k n_k (mu_k - mu)(mu_k - mu)^T",
                                "between": "(1/K) sum_k (mu_k - mu)(mu_k - mu)^T",
                                "nc1": "tr(Sigma_W Sigma_B^+) / K, Sigma_W = W / N",
                                "source": "Papyan, Han and Donoho, PNAS 2020"}}


def _symmetric(lower: torch.Tensor) -> torch.Tensor:
    return torch.tril(lower) + torch.tril(lower, -1).T


def class_scatter(moments: Moments, counts: torch.Tensor, sums: torch.Tensor) -> ClassScatter:
    """:class:`ClassScatter` from the pooled moments and per-class counts (K,) and sums (K, d)."""
    present = counts > 0
    n_k, s_k = counts[present], sums[present]
    labels = torch.nonzero(present).flatten().tolist()
    k, n = int(n_k.numel()), float(n_k.sum())
    if k < 2:
        raise CollapseProbeError(f"within/between-class statistics need at least 2 classes, got {k}")
    mu = moments.mean.to(torch.float64)
    offsets = s_k / n_k.unsqueeze(1) - mu  # (K, d): mu_k - mu
    between_weighted = (offsets * n_k.unsqueeze(1)).T @ offsets
    within = _symmetric(moments.m2.to(torch.float64)) - between_weighted
    sigma_b = offsets.T @ offsets / k
    sigma_w = within / n
    b_values, b_vectors = torch.linalg.eigh(sigma_b)
    keep = b_values > PINV_RTOL * max(float(b_values.max()), 0.0)
    pinv = (b_vectors[:, keep] / b_values[keep]) @ b_vectors[:, keep].T
    nc1 = float(torch.trace(sigma_w @ pinv)) / k if bool(keep.any()) else math.nan
    dof = max(n - k, 1.0)
    within_values = torch.linalg.eigvalsh(within / dof).flip(0).clamp_min(0.0).cpu()
    between_values = b_values.flip(0).clamp_min(0.0).cpu()
    return ClassScatter(k, int(n), nc1, within_values, between_values,
                        {str(label): int(c) for label, c in zip(labels, n_k.tolist(), strict=True)})


@dataclass(frozen=True)
class ClassSpectra:
    """One layer's pooled spectrum, each class's spectrum (by label), and the class scatter."""

    pooled: Spectrum
    classes: dict[str, Spectrum]
    scatter: ClassScatter | None = None
    too_few: dict[str, int] = field(default_factory=dict)  # classes with < 2 rows: no spectrum, by label

    def worst(self, metric: str = "effective_rank", min_samples: int = 2) -> tuple[str, float] | None:
        """The class with the lowest ``metric`` among those with at least ``min_samples`` rows."""
        judged = {label: s.metrics()[metric] for label, s in self.classes.items() if s.n_samples >= min_samples}
        judged = {label: v for label, v in judged.items() if isinstance(v, float) and not math.isnan(v)}
        if not judged:
            return None
        label = min(judged, key=judged.__getitem__)
        return label, judged[label]

    def to_dict(self) -> dict[str, Any]:
        worst = {metric: self.worst(metric) for metric in ("effective_rank", "rankme")}
        return {"pooled": self.pooled.to_dict(), "classes": {k: s.to_dict() for k, s in self.classes.items()},
                "worst": {m: None if w is None else {"class": w[0], "value": w[1]} for m, w in worst.items()},
                "scatter": None if self.scatter is None else self.scatter.to_dict(), "too_few": dict(self.too_few)}

    def frame(self) -> Any:
        """A pandas DataFrame: one row per class (its metrics, n, sample-limit flags), pooled first."""
        import pandas as pd

        rows = [{"class": "(pooled)", **self.pooled.metrics()}]
        rows += [{"class": label, **s.metrics()} for label, s in self.classes.items()]
        return pd.DataFrame(rows)


def by_layer(results: Mapping[str, dict[str, Any]]) -> dict[str, ClassSpectra]:
    """The accumulators' ``compute()`` dicts as :class:`ClassSpectra` per layer."""
    return {name: ClassSpectra(r["pooled"], r["classes"], r["scatter"], r.get("too_few", {}))
            for name, r in results.items()}
