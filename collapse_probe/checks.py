"""Collapse checks for CI: bounds on metrics, comparison with a baseline, JSON and JUnit reports.

Each check is one metric of one layer against one bound:

* ``min-effective-rank``: ``Spectrum.effective_rank >= bound``;
* ``min-rankme``: ``Spectrum.rankme >= bound``;
* ``max-collapsed-fraction``: ``Spectrum.collapsed_fraction() <= bound`` (collapsed dims / d);
* ``max-drop``: for effective rank and RankMe, ``value >= (1 - max_drop) * baseline value`` on the
  same layer of a saved baseline spectrum.

A NaN value fails its check. ``collapse-probe check`` exits 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collapse_probe.errors import CollapseProbeError
from collapse_probe.result import Spectrum, json_safe


@dataclass(frozen=True)
class CheckResult:
    """One metric of one layer against one bound."""

    check: str
    layer: str
    metric: str
    value: float
    bound: float
    passed: bool

    @property
    def message(self) -> str:
        """``PASS``/``FAIL``, the layer, the measured value and the bound, in one line."""
        op = "<=" if self.check.startswith("max-collapsed") else ">="
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.check} [{self.layer}]: {self.metric} = {self.value:.4g} (required {op} {self.bound:.4g})"


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


def validate_bounds(*, min_effective_rank: float | None = None, min_rankme: float | None = None,
                    max_collapsed_fraction: float | None = None, has_baseline: bool = False,
                    max_drop: float | None = None) -> None:
    """Raise :class:`CollapseProbeError` for a meaningless set of bounds (before any probing)."""
    if has_baseline != (max_drop is not None):
        raise CollapseProbeError("--baseline and --max-drop go together: give both or neither")
    if max_drop is not None and not 0 <= max_drop < 1:
        raise CollapseProbeError(f"--max-drop is a fraction in [0, 1), got {max_drop}")
    if max_collapsed_fraction is not None and not 0 <= max_collapsed_fraction <= 1:
        raise CollapseProbeError(f"--max-collapsed-fraction is a fraction in [0, 1], got {max_collapsed_fraction}")
    if all(v is None for v in (min_effective_rank, min_rankme, max_collapsed_fraction, max_drop)):
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
) -> list[CheckResult]:
    """Evaluate every requested check on every layer (module docstring); at least one is needed.

    >>> import torch
    >>> healthy = Spectrum.from_embeddings(torch.randn(2000, 8, dtype=torch.float64))
    >>> [r.passed for r in run_checks({"fc": healthy}, min_effective_rank=7.5, max_collapsed_fraction=0.1)]
    [True, True]
    >>> collapsed = Spectrum.from_embeddings(torch.randn(2000, 8, dtype=torch.float64) * torch.tensor([1.0] * 2 + [0.0] * 6))
    >>> print(run_checks({"fc": collapsed}, max_collapsed_fraction=0.5)[0].message)
    FAIL max-collapsed-fraction [fc]: collapsed_fraction = 0.75 (required <= 0.5)
    """
    validate_bounds(min_effective_rank=min_effective_rank, min_rankme=min_rankme,
                    max_collapsed_fraction=max_collapsed_fraction, has_baseline=baseline is not None,
                    max_drop=max_drop)
    results: list[CheckResult] = []

    def at_least(check: str, layer: str, metric: str, value: float, bound: float) -> None:
        results.append(CheckResult(check, layer, metric, value, bound, not math.isnan(value) and value >= bound))

    for layer, s in spectra.items():
        if min_effective_rank is not None:
            at_least("min-effective-rank", layer, "effective_rank", s.effective_rank, min_effective_rank)
        if min_rankme is not None:
            at_least("min-rankme", layer, "rankme", s.rankme, min_rankme)
        if max_collapsed_fraction is not None:
            value = s.collapsed_fraction()
            results.append(CheckResult("max-collapsed-fraction", layer, "collapsed_fraction", value,
                                       max_collapsed_fraction, value <= max_collapsed_fraction))
    if baseline is not None and max_drop is not None:
        for layer, base_layer in _layer_pairs(spectra, baseline):
            for metric in ("effective_rank", "rankme"):
                reference = getattr(baseline[base_layer], metric)
                at_least("max-drop", layer, metric, getattr(spectra[layer], metric), (1 - max_drop) * reference)
    return results


def write_report_json(path: str | Path, results: Sequence[CheckResult], *, source: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """``{"passed", "n_checks", "n_failed", "checks": [...], "metrics": {layer: {...}}, "source"}``."""
    failed = [r for r in results if not r.passed]
    document = {
        "passed": not failed, "n_checks": len(results), "n_failed": len(failed),
        "checks": [{**asdict(r), "message": r.message} for r in results],
        "metrics": dict(metrics or {}), "source": dict(source or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(document), indent=1))
    return path


def write_junit_xml(path: str | Path, results: Sequence[CheckResult], *, suite: str = "collapse-probe") -> Path:
    """A JUnit XML report: one ``<testcase>`` per check, a ``<failure>`` for each failed one."""
    failures = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures))
    element = ET.SubElement(suites, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                            errors="0", skipped="0")
    for r in results:
        case = ET.SubElement(element, "testcase", classname=f"{suite}.{r.layer}", name=f"{r.check}:{r.metric}")
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.message, type="CollapseCheckFailed")
            failure.text = r.message
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path


