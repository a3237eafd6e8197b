"""Collapse checks for CI: bounds on metrics, comparison with a baseline (the JSON and JUnit
reports, re-exported here, live in :mod:`collapse_probe.checks.reports`).

Each check is one metric of one layer against one bound:

* ``min-effective-rank``: ``Spectrum.effective_rank >= bound``;
* ``min-rankme``: ``Spectrum.rankme >= bound``;
* ``max-collapsed-fraction``: at most this fraction of the layer's d dimensions is collapsed;
* ``max-drop``: for effective rank and RankMe, ``value >= (1 - max_drop) * baseline value`` on the
  same layer of a saved baseline spectrum.
* ``max-drop`` with ``max_drop_sigma = Z``: fail only when the drop ``baseline - value`` also
  exceeds ``Z * SE``: the paired jackknife SE of the difference when both spectra hold
  leave-one-group-out replicates of the same images in the same groups, otherwise the combined
  ``sqrt(se_value^2 + se_baseline^2)``, and the result says its bars are unpaired
  (:mod:`collapse_probe.checks.baseline`; both spectra must have been probed with ``groups=K``).
  Alone (no ``max_drop``) it fails on any drop beyond Z standard errors.

A baseline of other conventions (center, normalize, ddof) or dimension is refused
(``CollapseProbeError``); one of more than 2x more or fewer samples draws a warning.

A NaN value fails its check. :func:`evaluate_checks` returns every judged result, every bound that
cannot be judged (:class:`Refusal`) and the warnings, together (:class:`CheckRun`); its verdict is
FAIL when any judged check fails, whatever else could not be judged, CANNOT JUDGE when none failed
and some could not be judged, else PASS (``collapse-probe check`` exits 1, 2, 0).

Sample-limited spectra (N - 1 < d centred: ``Spectrum.sample_limited``). N samples show at most
``max_rank`` of the d dimensions; the other ``unobserved_dims`` could be anything. A verdict is
given only when it holds whatever those dimensions do; otherwise the bound is a :class:`Refusal`
("need at least d + 1 samples, got N"; :func:`run_checks` raises :class:`CannotJudgeError`):

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collapse_probe.checks.baseline import (
    check_comparable,
    data_difference,
    drop_bound,
    sample_count_warning,
)
from collapse_probe.checks.reports import write_junit_xml, write_report_json
from collapse_probe.errors import CollapseProbeError
from collapse_probe.results.spectrum import Spectrum

__all__ = ["CannotJudgeError", "CheckResult", "CheckRun", "Refusal", "evaluate_checks", "run_checks",
           "validate_bounds", "write_junit_xml", "write_report_json"]


class CannotJudgeError(CollapseProbeError):
    """A requested bound cannot be judged from the samples given: too few to show every dimension.

    ``needed_samples`` is the fewest samples that can (``d + 1`` for a centred spectrum);
    ``results`` the checks that were judged all the same, ``refusals`` every bound that was not.
    """

    def __init__(self, message: str, needed_samples: int, results: Sequence[CheckResult] = (),
                 refusals: Sequence[Refusal] = ()) -> None:
        super().__init__(message)
        self.needed_samples = needed_samples
        self.results = list(results)
        self.refusals = list(refusals)


@dataclass(frozen=True)
class CheckResult:
    """One metric of one layer against one bound.

    ``detail``, when set, replaces ``metric = value`` in the message: a sample-limited
    collapsed-fraction check states the bound it proved (``at most`` / ``at least``), a
    ``max-drop-sigma`` check its error bars. ``se`` is the standard error of the drop that a
    ``max-drop-sigma`` check used and ``error_bars`` which: ``"paired"`` (jackknife of the
    difference, same images and groups) or ``"unpaired"`` (combined independent errors).
    """

    check: str
    layer: str
    metric: str
    value: float
    bound: float
    passed: bool
    detail: str = ""
    se: float | None = None
    error_bars: str | None = None

    @property
    def verdict(self) -> str:
        """``"pass"`` or ``"fail"``."""
        return "pass" if self.passed else "fail"

    @property
    def message(self) -> str:
        """``PASS``/``FAIL``, the layer, the measured value and the bound, in one line."""
        op = "<=" if self.check.startswith("max-collapsed") else ">="
        measured = self.detail or f"{self.metric} = {self.value:.4g}"
        return f"{self.verdict.upper()} {self.check} [{self.layer}]: {measured} (required {op} {self.bound:.4g})"


@dataclass(frozen=True)
class Refusal:
    """One bound that the samples cannot judge, with why and how many samples could.

    ``value`` is the measured one (of the baseline, when the baseline is what falls short),
    ``bound`` None when the baseline itself cannot be judged against.
    """

    check: str
    layer: str
    metric: str
    value: float
    bound: float | None
    reason: str
    needed_samples: int
    n_samples: int

    verdict = "cannot judge"

    @property
    def text(self) -> str:
        """``check [layer]: reason`` (the part of :class:`CannotJudgeError`'s message for this bound)."""
        return f"{self.check} [{self.layer}]: {self.reason}"

    @property
    def message(self) -> str:
        """``CANNOT JUDGE check [layer]: reason``, one line."""
        return f"CANNOT JUDGE {self.text}"


@dataclass(frozen=True)
class CheckRun:
    """Everything one check run found: judged ``results``, ``refusals`` and ``warnings`` (lines)."""

    results: list[CheckResult] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        """The judged checks that failed."""
        return [r for r in self.results if not r.passed]

    @property
    def verdict(self) -> str:
        """``"fail"`` when a judged check failed (whatever could not be judged), else ``"cannot judge"``
        when a bound could not be judged, else ``"pass"``."""
        return "fail" if self.failed else "cannot judge" if self.refusals else "pass"

    @property
    def refused(self) -> str | None:
        """``"cannot judge A; B"``, naming every refused bound, or None."""
        return "cannot judge " + "; ".join(r.text for r in self.refusals) if self.refusals else None

    def error(self) -> CannotJudgeError | None:
        """The :class:`CannotJudgeError` of the refusals (None without any)."""
        if not self.refusals:
            return None
        return CannotJudgeError(self.refused or "", max(r.needed_samples for r in self.refusals),
                                self.results, self.refusals)


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


class _Judge:
    """Collects one run's results, refusals and warnings (the rules: module docstring)."""

    def __init__(self, sample_name: str) -> None:
        self.run = CheckRun()
        self.samples = sample_name

    def at_least(self, check: str, layer: str, metric: str, s: Spectrum, bound: float, detail: str = "",
                 se: float | None = None, error_bars: str | None = None) -> None:
        """PASS at or above ``bound``; below it FAIL, or a refusal when the samples cannot show every dim."""
        value = getattr(s, metric)
        passed = not math.isnan(value) and value >= bound
        shown, needed = (min(s.n_samples, s.dim), s.dim) if metric == "rankme" else (s.max_rank, s.samples_needed)
        if passed or shown == s.dim:
            self.run.results.append(CheckResult(check, layer, metric, value, bound, passed, detail, se, error_bars))
            return
        self.run.refusals.append(Refusal(
            check, layer, metric, value, bound,
            f"{metric} = {value:.4g} from {s.n_samples} {self.samples}, which show at most {shown} of its {s.dim} "
            f"dimensions; need at least {needed} {self.samples}, got {s.n_samples}", needed, s.n_samples))

    def collapsed_share(self, layer: str, s: Spectrum, bound: float) -> None:
        """At most ``bound`` of the d dims collapsed; a sample-limited spectrum only when it holds anyway."""
        name = "max-collapsed-fraction"
        if not s.sample_limited:
            value = s.collapsed_fraction()
            self.run.results.append(CheckResult(name, layer, "collapsed_fraction", value, bound, value <= bound))
            return
        collapsed, unobserved, d = s.collapsed_dims(), s.unobserved_dims, s.dim
        shown = f"{collapsed} of the {s.max_rank} that {s.n_samples} {self.samples} show"
        low, high = collapsed / d, (collapsed + unobserved) / d
        if high <= bound:
            self.run.results.append(CheckResult(
                name, layer, "collapsed_fraction", high, bound, True,
                f"at most {high:.4g} of {d} dims collapsed ({shown}, and all {unobserved} they cannot)"))
        elif low > bound:
            self.run.results.append(CheckResult(
                name, layer, "collapsed_fraction", low, bound, False,
                f"at least {low:.4g} of {d} dims collapsed ({shown}; the {unobserved} they cannot show not counted)"))
        else:
            self.run.refusals.append(Refusal(
                name, layer, "collapsed_fraction", low, bound,
                f"between {low:.4g} and {high:.4g} of its {d} dimensions are collapsed ({shown}; {unobserved} "
                f"unobserved); need at least {s.samples_needed} {self.samples}, got {s.n_samples}",
                s.samples_needed, s.n_samples))

    def against_baseline(self, layer: str, s: Spectrum, reference: Spectrum, max_drop: float | None,
                         max_drop_sigma: float | None, data: str | None) -> None:
        """``max-drop`` on effective rank and RankMe, with the sample-count and error-bar warnings."""
        warning = sample_count_warning(layer, s, reference)
        if warning:
            self.run.warnings.append(warning)
        for metric in ("effective_rank", "rankme"):
            shown, needed = ((min(reference.n_samples, reference.dim), reference.dim) if metric == "rankme"
                             else (reference.max_rank, reference.samples_needed))
            if shown < reference.dim:
                self.run.refusals.append(Refusal(
                    "max-drop", layer, metric, getattr(reference, metric), None,
                    f"the baseline's {metric} comes from {reference.n_samples} {self.samples}, which show at most "
                    f"{shown} of its {reference.dim} dimensions; need a baseline of at least {needed} {self.samples}",
                    needed, reference.n_samples))
                continue
            bound, detail, error = drop_bound(metric, s, reference, max_drop, max_drop_sigma, layer, data)
            if error is not None and not error.paired:
                note = (f"max-drop-sigma [{layer}]: unpaired error bars, {error.why}; the drop is measured against "
                        "the combined SE sqrt(se^2 + se_baseline^2), which assumes independent samples and is many "
                        "times too wide for two probes of the same images")
                if note not in self.run.warnings:
                    self.run.warnings.append(note)
            self.at_least("max-drop", layer, metric, s, bound, detail, None if error is None else error.se,
                          None if error is None else ("paired" if error.paired else "unpaired"))


def evaluate_checks(
    spectra: Mapping[str, Spectrum],
    *,
    min_effective_rank: float | None = None,
    min_rankme: float | None = None,
    max_collapsed_fraction: float | None = None,
    baseline: Mapping[str, Spectrum] | None = None,
    max_drop: float | None = None,
    max_drop_sigma: float | None = None,
    sample_name: str = "samples",
    source: Mapping[str, Any] | None = None,
    baseline_source: Mapping[str, Any] | None = None,
) -> CheckRun:
    """Evaluate every requested check on every layer (module docstring): judged, refused and warnings.

    ``source`` / ``baseline_source`` say which data each spectrum came from (the ``source`` of a
    :class:`~collapse_probe.pipeline.outputs.ProbeResult`: ``data``, ``n_images``, ...); only
    when both record the same data can ``max_drop_sigma`` pair the error bars
    (:func:`~collapse_probe.checks.baseline.data_difference`). Raises
    :class:`CollapseProbeError` for bad bounds and for a baseline of other conventions or dimension.

    >>> import torch
    >>> wide = Spectrum.from_embeddings(torch.randn(20, 64, dtype=torch.float64))  # 20 samples, 64 dims
    >>> narrow = Spectrum.from_embeddings(torch.randn(20, 1, dtype=torch.float64) * torch.ones(4, dtype=torch.float64))
    >>> run = evaluate_checks({"wide": wide, "narrow": narrow}, min_effective_rank=20)
    >>> run.verdict, [r.message[:36] for r in run.results], [r.needed_samples for r in run.refusals]
    ('fail', ['FAIL min-effective-rank [narrow]: ef'], [65])
    """
    validate_bounds(min_effective_rank=min_effective_rank, min_rankme=min_rankme,
                    max_collapsed_fraction=max_collapsed_fraction, has_baseline=baseline is not None,
                    max_drop=max_drop, max_drop_sigma=max_drop_sigma)
    judge = _Judge(sample_name)
    pairs = check_comparable(spectra, baseline) if baseline is not None else []
    for layer, s in spectra.items():
        if min_effective_rank is not None:
            judge.at_least("min-effective-rank", layer, "effective_rank", s, min_effective_rank)
        if min_rankme is not None:
            judge.at_least("min-rankme", layer, "rankme", s, min_rankme)
        if max_collapsed_fraction is not None:
            judge.collapsed_share(layer, s, max_collapsed_fraction)
    data = data_difference(source, baseline_source) if max_drop_sigma is not None else None
    for layer, base_layer in pairs:
        judge.against_baseline(layer, spectra[layer], baseline[base_layer], max_drop, max_drop_sigma, data)
    return judge.run


def run_checks(spectra: Mapping[str, Spectrum], **bounds: Any) -> list[CheckResult]:
    """:func:`evaluate_checks`' judged results; raises :class:`CannotJudgeError` (naming each bound
    that cannot be judged, and carrying the judged ``results``) when any bound cannot be judged.

    Takes the keywords of :func:`evaluate_checks`; ``sample_name`` is the word its messages use
    ("images" for the CLI).

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
    run = evaluate_checks(spectra, **bounds)
    refusal = run.error()
    if refusal is not None:
        raise refusal
    return run.results
