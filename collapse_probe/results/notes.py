"""What the CLI prints beside the spectrum table: per-class tables, the class scatter, token norms."""

from __future__ import annotations

import math
from collections.abc import Mapping

from collapse_probe.functional.metrics import effective_rank
from collapse_probe.results.classes import ClassSpectra
from collapse_probe.results.spectrum import Spectrum
from collapse_probe.results.table import render_table


def _number(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def class_table(classes: Mapping[str, ClassSpectra]) -> str:
    """One line per layer and class (N, effective rank, RankMe, collapsed, sample-limited), then
    each layer's worst class by effective rank and RankMe, and its within/between statistics.

    >>> import torch
    >>> z = torch.randn(300, 3, dtype=torch.float64)
    >>> pooled = Spectrum.from_embeddings(z)
    >>> print(class_table({"fc": ClassSpectra(pooled, {"0": Spectrum.from_embeddings(z[:150])})}))  # doctest: +ELLIPSIS
    layer  class       N  eff.rank  RankMe  collapsed  sample-limited
    fc     (pooled)  300  ...
    fc     0         150  ...
    fc: worst class by effective_rank: 0 (...); by rankme: 0 (...)
    """
    rows, lines = [], []
    for layer, result in classes.items():
        for label, s in [("(pooled)", result.pooled), *result.classes.items()]:
            rows.append((layer, label, s.n_samples, _number(s.effective_rank), _number(s.rankme),
                         f"{s.collapsed_dims()}/{s.max_rank}", "yes" if s.sample_limited else ""))
        worst = [(metric, result.worst(metric)) for metric in ("effective_rank", "rankme")]
        named = [f"{metric}: {w[0]} ({w[1]:.2f})" for metric, w in worst if w is not None]
        if named:
            lines.append(f"{layer}: worst class by " + "; by ".join(named))
        if result.scatter is not None:
            sc = result.scatter
            within = effective_rank(sc.within_eigenvalues.clamp_min(0).sqrt())
            lines.append(f"{layer}: {sc.n_classes} classes, NC1 = tr(Sigma_W Sigma_B^+)/K = {_number(sc.nc1)}, "
                         f"within-class effective rank {_number(within)} of {sc.within_eigenvalues.numel()}")
    table = render_table(("layer", "class", "N", "eff.rank", "RankMe", "collapsed", "sample-limited"), rows,
                         left=2) if rows and any(r[1] != "(pooled)" for r in rows) else ""
    return "\n".join(part for part in [table, *lines] if part)


def token_norm_notes(spectra: Mapping[str, Spectrum]) -> list[str]:
    """One line per layer probed with token rows: how the token norms spread (artifact tokens)."""
    notes = []
    for name, s in spectra.items():
        norms = s.extra.get("token_norms")
        if not norms:
            continue
        notes.append(f"{name}: {norms['n']} token rows ({s.extra.get('tokens')}); norm median {_number(norms['q50'])}, "
                     f"99th percentile {_number(norms['q99'])}, max {_number(norms['max'])}; "
                     f"{norms['n_above_10x_median']} above 10x the median")
    return notes
