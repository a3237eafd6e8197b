"""The verdict of a check run as files for CI: a JSON report and a JUnit XML report.

Every run writes the reports it was asked for, whatever its outcome, so that a CI job never
reads a stale report from an earlier run, and writes each atomically (a temporary file in the same
folder, then ``os.replace``: :mod:`collapse_probe._utils.files`), so that a crash leaves the old
report or the whole new one, never half of one. The writers take the judged checks of
:func:`~collapse_probe.checks.verdicts.evaluate_checks`, the bounds it could not judge
(``refusals``: :class:`~collapse_probe.checks.verdicts.Refusal`), its ``warnings``, and the ways a
run can end without a bound-by-bound verdict, the same ones
:func:`~collapse_probe.checks.summary.summary_markdown` takes:

* ``failure="CHECK: why"``: a finding that fails the run before any bound is checked (the model's
  output holds NaN/Inf: ``"finite-output: non-finite embeddings ..."``). Verdict ``"fail"``;
  counted as one more failed check (a JUnit ``<failure>``).
* ``refusals`` (or, without them, ``refused="cannot judge ..."``): bounds the samples cannot judge.
  Verdict ``"cannot judge"`` when nothing failed (a judged FAIL beats it); a JUnit ``<error>`` each.
* ``error="..."``: the run stopped on bad input or a bug. Verdict ``"error"``; a JUnit ``<error>``.

Only ``"pass"`` has ``"passed": true``; a JUnit report passes only when it has neither failures
nor errors.

>>> verdict([]), verdict([], failure="finite-output: NaN"), verdict([], refused="cannot judge x")
('pass', 'fail', 'cannot judge')
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collapse_probe._utils.files import atomic_write_bytes, atomic_write_text
from collapse_probe.results.spectrum import json_safe

if TYPE_CHECKING:
    from collapse_probe.checks.verdicts import CheckResult, Refusal

#: Every value of the JSON report's ``"verdict"``, with the exit code of ``collapse-probe check``.
VERDICTS = {"pass": 0, "fail": 1, "cannot judge": 2, "error": 2}


def refused_line(refusals: Sequence[Refusal], refused: str | None = None) -> str | None:
    """``refused``, else ``"cannot judge A; B"`` naming each refusal, else None."""
    if refused or not refusals:
        return refused or None
    return "cannot judge " + "; ".join(r.text for r in refusals)


def verdict(results: Sequence[CheckResult], *, failure: str | None = None, refused: str | None = None,
            error: str | None = None) -> str:
    """``"error"``, else ``"fail"`` (a finding or a failed check), else ``"cannot judge"``, else ``"pass"``."""
    if error:
        return "error"
    if failure or any(not r.passed for r in results):
        return "fail"
    return "cannot judge" if refused else "pass"


def _check_entries(results: Sequence[CheckResult], refusals: Sequence[Refusal], failure: str | None) -> list[dict]:
    entries = [{**asdict(r), "verdict": r.verdict, "message": r.message} for r in results]
    entries += [{**asdict(r), "verdict": "cannot judge", "passed": False, "message": r.message} for r in refusals]
    if failure:
        name, _, why = failure.partition(": ")
        entries.append({"check": name, "layer": None, "metric": None, "value": None, "bound": None, "passed": False,
                        "verdict": "fail", "detail": why, "message": f"FAIL {failure}"})
    return entries


def write_report_json(path: str | Path, results: Sequence[CheckResult], *, refusals: Sequence[Refusal] = (),
                      warnings: Sequence[str] = (), source: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, Mapping[str, Any]] | None = None, failure: str | None = None,
                      refused: str | None = None, error: str | None = None) -> Path:
    """``{"verdict", "passed", "reason", "n_checks", "n_failed", "n_cannot_judge", "n_errors", "warnings",
    "checks": [...], "metrics": {layer: {...}}, "source"}``, written atomically.

    ``checks`` holds every judged check (``verdict`` ``"pass"``/``"fail"``; a ``max-drop-sigma``
    one with its ``se`` and ``error_bars``, ``"paired"`` or ``"unpaired"``), then every refused
    bound (``verdict`` ``"cannot judge"``, ``reason``, ``needed_samples``, ``n_samples``), then a
    ``failure`` ``"CHECK: why"`` (``passed`` false, its ``detail`` the why, no layer, metric, value
    or bound). ``reason`` is ``failure``, else the ``cannot judge ...`` line, else ``error``; null
    when every bound was judged. ``n_errors`` counts the refusals and the ``error``.
    """
    refused = refused_line(refusals, refused)
    checks = _check_entries(results, refusals, failure)
    outcome = verdict(results, failure=failure, refused=refused, error=error)
    document = {
        "verdict": outcome, "passed": outcome == "pass", "reason": failure or refused or error or None,
        "n_checks": len(checks), "n_failed": sum(not r.passed for r in results) + bool(failure),
        "n_cannot_judge": len(refusals) or int(bool(refused)),
        "n_errors": (len(refusals) or int(bool(refused))) + bool(error),
        "warnings": list(warnings), "checks": checks, "metrics": dict(metrics or {}), "source": dict(source or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(json_safe(document), indent=1))


def _properties(parent: ET.Element, pairs: Sequence[tuple[str, Any]]) -> None:
    if pairs:
        element = ET.SubElement(parent, "properties")
        for name, value in pairs:
            ET.SubElement(element, "property", name=name, value=str(value))


def _add_case(suite: ET.Element, classname: str, name: str, problem: tuple[str, str] | None, message: str,
              properties: Sequence[tuple[str, Any]] = ()) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    _properties(case, properties)
    if problem is not None:
        ET.SubElement(case, problem[0], message=message, type=problem[1]).text = message
    ET.SubElement(case, "system-out").text = message


def write_junit_xml(path: str | Path, results: Sequence[CheckResult], *, refusals: Sequence[Refusal] = (),
                    warnings: Sequence[str] = (), suite: str = "collapse-probe", failure: str | None = None,
                    refused: str | None = None, error: str | None = None) -> Path:
    """A JUnit XML report, written atomically: one ``<testcase>`` per check, its message in ``<system-out>``.

    A failed check has a ``<failure>``; a ``max-drop-sigma`` check the properties ``error_bars``
    (``paired``/``unpaired``) and ``se``; a refused bound an ``<error type="CannotJudge">`` (never
    a skip, which CI would count as passing) and the properties ``needed_samples`` and
    ``n_samples``. A ``failure`` ``"CHECK: why"`` adds a testcase ``CHECK`` with a ``<failure>``;
    ``refused`` without ``refusals`` one testcase ``cannot-judge`` and ``error`` a testcase
    ``error``, each with an ``<error>``. Each warning is a ``warning`` property of the suite and a
    line of its ``<system-out>``.
    """
    cases: list[tuple[str, str, tuple[str, str] | None, str, list[tuple[str, Any]]]] = []
    for r in results:
        bars = [] if r.error_bars is None else [("error_bars", r.error_bars), ("se", r.se)]
        cases.append((f"{suite}.{r.layer}", f"{r.check}:{r.metric}", None if r.passed else
                      ("failure", "CollapseCheckFailed"), r.message, bars))
    for r in refusals:
        cases.append((f"{suite}.{r.layer}", f"{r.check}:{r.metric}", ("error", "CannotJudge"), r.message,
                      [("needed_samples", r.needed_samples), ("n_samples", r.n_samples)]))
    if failure:
        cases.append((suite, failure.partition(": ")[0], ("failure", "CollapseCheckFailed"), f"FAIL {failure}", []))
    if refused and not refusals:
        cases.append((suite, "cannot-judge", ("error", "CannotJudge"), refused, []))
    if error:
        cases.append((suite, "error", ("error", "CheckError"), error, []))
    kinds = [case[2][0] for case in cases if case[2]]
    counts = {"tests": str(len(cases)), "failures": str(kinds.count("failure")), "errors": str(kinds.count("error"))}
    suites = ET.Element("testsuites", name=suite, **counts)
    element = ET.SubElement(suites, "testsuite", name=suite, **counts, skipped="0")
    _properties(element, [("warning", text) for text in warnings])
    for case in cases:
        _add_case(element, *case)
    if warnings:
        ET.SubElement(element, "system-out").text = "\n".join(f"WARNING {text}" for text in warnings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, ET.tostring(suites, encoding="utf-8", xml_declaration=True))
