"""Collapse checks for CI: bounds on metrics, comparison with a baseline (the JSON and JUnit
reports, re-exported here, live in :mod:`collapse_probe.checks.reports`).

Each check is one metric of one layer against one bound:

* ``min-effective-rank``: ``Spectrum.effective_rank >= bound``;
* ``min-rankme``: ``Spectrum.rankme >= bound``;
* ``max-collapsed-fraction``: at most this fraction of the layer's d dimensions is collapsed;
* ``max-drop``: for effective rank and RankMe, ``value >= (1 - max_drop) * baseline value`` on the
  same layer of a saved baseline spectrum.
* ``max-drop`` with ``max_drop_sigma = Z``: fail only when the drop ``baseline - value`` also
  exceeds ``Z * sqrt(se_value^2 + se_baseline^2)``, the combined jackknife standard errors
  (``Spectrum.stderr``; both spectra must have been probed with ``groups=K``). Alone (no
  ``max_drop``) it fails on any drop beyond Z standard errors.

A NaN value fails its check. ``collapse-probe check`` exits 0 when every check passes, 1 otherwise.

Sample-limited spectra (N - 1 < d centred: ``Spectrum.sample_limited``). N samples show at most
``max_rank`` of the d dimensions; the other ``unobserved_dims`` could be anything. A verdict is
given only when it holds whatever those dimensions do; otherwise :func:`run_checks` raises
:class:`CannotJudgeError` ("need at least d + 1 samples, got N"), and the CLI exits 2:

* ``min-effective-rank`` / ``min-rankme`` / ``max-drop``: the value of a sample-limited spectrum
  is at most ``max_rank`` (``min(N, d)`` for RankMe) and would rise if the unobserved dimensions
  were shown, so a value at or above the bound is a PASS, and one below it cannot be judged (a
  FAIL would be the sample count's). A sample-limited *baseline* cannot be judged against: its
  value understates the baseline model's.
* ``max-collapsed-fraction``: with c collapsed among the ``max_rank`` dimensions shown and u
  unobserved, the collapsed share of all d is between ``c / d`` and ``(c + u) / d``: PASS when
  ``(c + u) / d <= bound`` (even if every unobserved dimension were collapsed), FAIL when ``c / d
  > bound`` (from the dimensions shown alone), otherwise it cannot be judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from collapse_probe.checks.reports import write_junit_xml, write_report_json
from collapse_probe.errors import CollapseProbeError
from collapse_probe.results.spectrum import Spectrum

__all__ = ["CannotJudgeError", "CheckResult", "run_checks", "validate_bounds", "write_junit_xml", "write_report_json"]


class CannotJudgeError(CollapseProbeError):
    """A requested bound cannot be judged from the samples given: too few to show every dimension.

    ``needed_samples`` is the fewest samples that can (``d + 1`` for a centred spectrum).
    """

    def __init__(self, message: str, needed_samples: int) -> None:
        super().__init__(message)
        self.needed_samples = needed_samples


@dataclass(frozen=True)
class CheckResult:
    """One metric of one layer against one bound.

    ``detail``, when set, replaces ``metric = value`` in the message: a sample-limited
    collapsed-fraction check states the bound it proved (``at most`` / ``at least``).
    """

    check: str
    layer: str
    metric: str
    value: float
    bound: float
    passed: bool
    detail: str = ""

    @property
    def message(self) -> str:
        """``PASS``/``FAIL``, the layer, the measured value and the bound, in one line."""
        op = "<=" if self.check.startswith("max-collapsed") else ">="
        verdict = "PASS" if self.passed else "FAIL"
        measured = self.detail or f"{self.metric} = {self.value:.4g}"
        return f"{verdict} {self.check} [{self.layer}]: {measured} (required {op} {self.bound:.4g})"


def _layer_pairs(spectra: Mapping[str, Spectrum], baseline: Mapping[str, Spectrum]) -> list[tuple[str, str]]:
    common = [name for name in spectra if name in baseline]
    if common:
        return [(name, name) for name in common]
    if len(spectra) == 1 and len(baseline) == 1:
        return [(next(iter(spectra)), next(iter(baseline)))]
    raise CollapseProbeError(
        f"the baseline has no layer in common with the probe (baseline: {', '.join(baseline)}; "
        f"probed: {', '.join(spectra)}); probe the same --layer"
    )


def _drop_bound(metric: str, s: Spectrum, reference: Spectrum, max_drop: float | None,
                max_drop_sigma: float | None, layer: str) -> tuple[float, str]:
    """The lowest passing value of ``metric`` against the baseline, and the message's detail.

    ``(1 - max_drop) * b`` alone; ``b - Z * se`` alone (``se`` the combined standard error); with
    both, the lower of the two: the drop must be both larger than allowed and larger than noise.
    """
    base = getattr(reference, metric)
    bounds = [] if max_drop is None else [(1 - max_drop) * base]
    if max_drop_sigma is None:
        return bounds[0], ""
    missing = [name for name, spectrum in (("probed", s), ("baseline", reference)) if metric not in spectrum.stderr]
    if missing:
        raise CollapseProbeError(
            f"--max-drop-sigma needs standard errors of {metric} [{layer}] in both spectra; the "
            f"{' and '.join(missing)} spectrum has none: probe with --groups K (spectrum(..., groups=K))"
        )
    se = math.hypot(s.stderr[metric], reference.stderr[metric])
    bounds.append(base - max_drop_sigma * se)
    value = getattr(s, metric)
    sigmas = (base - value) / se if se > 0 else math.copysign(math.inf, base - value)
    detail = (f"{metric} = {value:.4g} +- {s.stderr[metric]:.2g}, baseline {base:.4g} +- "
              f"{reference.stderr[metric]:.2g}: drop {base - value:.3g} = {sigmas:.2f} combined SE")
    return min(bounds), detail


def validate_bounds(*, min_effective_rank: float | None = None, min_rankme: float | None = None,
                    max_collapsed_fraction: float | None = None, has_baseline: bool = False,
                    max_drop: float | None = None, max_drop_sigma: float | None = None) -> None:
    """Raise :class:`CollapseProbeError` for a meaningless set of bounds (before any probing)."""
    if has_baseline != (max_drop is not None or max_drop_sigma is not None):
        raise CollapseProbeError("--baseline goes with --max-drop and/or --max-drop-sigma: give both or neither")
    if max_drop_sigma is not None and not (max_drop_sigma > 0 and math.isfinite(max_drop_sigma)):
        raise CollapseProbeError(f"--max-drop-sigma is a positive number of standard errors, got {max_drop_sigma}")
    if max_drop is not None and not 0 <= max_drop < 1:
        raise CollapseProbeError(f"--max-drop is a fraction in [0, 1), got {max_drop}")
    if max_collapsed_fraction is not None and not 0 <= max_collapsed_fraction <= 1:
        raise CollapseProbeError(f"--max-collapsed-fraction is a fraction in [0, 1], got {max_collapsed_fraction}")
    if all(v is None for v in (min_effective_rank, min_rankme, max_collapsed_fraction, max_drop, max_drop_sigma)):
        raise CollapseProbeError(
            "no check requested: give --min-effective-rank, --min-rankme, --max-collapsed-fraction "
            "or --baseline FILE --max-drop FRACTION"
        )


def run_checks(
    spectra: Mapping[str, Spectrum],
    *,
    min_effective_rank: float | None = None,
    min_rankme: float | None = None,
    max_collapsed_fraction: float | None = None,
    baseline: Mapping[str, Spectrum] | None = None,
    max_drop: float | None = None,
    max_drop_sigma: float | None = None,
    sample_name: str = "samples",
) -> list[CheckResult]:
    """Evaluate every requested check on every layer (module docstring); at least one is needed.

    Raises :class:`CannotJudgeError` (after evaluating every check, naming each that cannot be
    judged) when a bound cannot be judged from a sample-limited spectrum; ``sample_name`` is the
    word its message uses ("images" for the CLI).

    >>> import torch
    >>> healthy = Spectrum.from_embeddings(torch.randn(2000, 8, dtype=torch.float64))
    >>> [r.passed for r in run_checks({"fc": healthy}, min_effective_rank=7.5, max_collapsed_fraction=0.1)]
    [True, True]
    >>> collapsed = Spectrum.from_embeddings(torch.randn(2000, 8, dtype=torch.float64) * torch.tensor([1.0] * 2 + [0.0] * 6))
    >>> print(run_checks({"fc": collapsed}, max_collapsed_fraction=0.5)[0].message)
    FAIL max-collapsed-fraction [fc]: collapsed_fraction = 0.75 (required <= 0.5)
    >>> few = Spectrum.from_embeddings(torch.randn(6, 8, dtype=torch.float64))  # 6 samples show 5 of 8 dims
    >>> print(run_checks({"fc": few}, max_collapsed_fraction=0.9)[0].message)
    PASS max-collapsed-fraction [fc]: at most 0.375 of 8 dims collapsed (0 of the 5 that 6 samples show, and all 3 they cannot) (required <= 0.9)
    >>> run_checks({"fc": few}, min_effective_rank=7)
    Traceback (most recent call last):
    ...
    collapse_probe.checks.verdicts.CannotJudgeError: cannot judge min-effective-rank [fc]: effective_rank = ... from 6 samples, which show at most 5 of its 8 dimensions; need at least 9 samples, got 6
    """
    validate_bounds(min_effective_rank=min_effective_rank, min_rankme=min_rankme,
                    max_collapsed_fraction=max_collapsed_fraction, has_baseline=baseline is not None,
                    max_drop=max_drop, max_drop_sigma=max_drop_sigma)
    results: list[CheckResult] = []
    refusals: list[tuple[str, int]] = []

    def at_least(check: str, layer: str, metric: str, s: Spectrum, bound: float, detail: str = "") -> None:
        value = getattr(s, metric)
        passed = not math.isnan(value) and value >= bound
        shown, needed = (min(s.n_samples, s.dim), s.dim) if metric == "rankme" else (s.max_rank, s.samples_needed)
        if passed or shown == s.dim:
            results.append(CheckResult(check, layer, metric, value, bound, passed, detail))
            return
        refusals.append((
            f"{check} [{layer}]: {metric} = {value:.4g} from {s.n_samples} {sample_name}, which show at most "
            f"{shown} of its {s.dim} dimensions; need at least {needed} {sample_name}, got {s.n_samples}", needed,
        ))

    def collapsed_share(layer: str, s: Spectrum, bound: float) -> None:
        if not s.sample_limited:
            value = s.collapsed_fraction()
            results.append(CheckResult("max-collapsed-fraction", layer, "collapsed_fraction", value, bound,
                                       value <= bound))
            return
        collapsed, unobserved, d = s.collapsed_dims(), s.unobserved_dims, s.dim
        shown = f"{collapsed} of the {s.max_rank} that {s.n_samples} {sample_name} show"
        if (collapsed + unobserved) / d <= bound:
            results.append(CheckResult(
                "max-collapsed-fraction", layer, "collapsed_fraction", (collapsed + unobserved) / d, bound, True,
                f"at most {(collapsed + unobserved) / d:.4g} of {d} dims collapsed ({shown}, and all {unobserved} "
                "they cannot)",
            ))
        elif collapsed / d > bound:
            results.append(CheckResult(
                "max-collapsed-fraction", layer, "collapsed_fraction", collapsed / d, bound, False,
                f"at least {collapsed / d:.4g} of {d} dims collapsed ({shown}; the {unobserved} they cannot show "
                "not counted)",
            ))
        else:
            refusals.append((
                f"max-collapsed-fraction [{layer}]: between {collapsed / d:.4g} and {(collapsed + unobserved) / d:.4g} "
                f"of its {d} dimensions are collapsed ({shown}; {unobserved} unobserved); need at least "
                f"{s.samples_needed} {sample_name}, got {s.n_samples}", s.samples_needed,
            ))

    for layer, s in spectra.items():
        if min_effective_rank is not None:
            at_least("min-effective-rank", layer, "effective_rank", s, min_effective_rank)
        if min_rankme is not None:
            at_least("min-rankme", layer, "rankme", s, min_rankme)
        if max_collapsed_fraction is not None:
            collapsed_share(layer, s, max_collapsed_fraction)
    if baseline is not None and (max_drop is not None or max_drop_sigma is not None):
        for layer, base_layer in _layer_pairs(spectra, baseline):
            reference = baseline[base_layer]
            for metric in ("effective_rank", "rankme"):
                shown, needed = ((min(reference.n_samples, reference.dim), reference.dim) if metric == "rankme"
                                 else (reference.max_rank, reference.samples_needed))
                if shown < reference.dim:
                    refusals.append((
                        f"max-drop [{layer}]: the baseline's {metric} comes from {reference.n_samples} "
                        f"{sample_name}, which show at most {shown} of its {reference.dim} dimensions; need a "
                        f"baseline of at least {needed} {sample_name}", needed,
                    ))
                    continue
                bound, detail = _drop_bound(metric, spectra[layer], reference, max_drop, max_drop_sigma, layer)
                at_least("max-drop", layer, metric, spectra[layer], bound, detail)
    if refusals:
        raise CannotJudgeError("cannot judge " + "; ".join(text for text, _ in refusals),
                               max(needed for _, needed in refusals))
    return results
