"""The verdict of a check run as files for CI: a JSON report and a JUnit XML report.

Every run writes the reports it was asked for, whatever its outcome, so that a CI job never
reads a stale report from an earlier run. Besides the checks of :func:`~collapse_probe.checks.verdicts.run_checks`
the writers take the three ways a run can end without a bound-by-bound verdict, the same three
:func:`~collapse_probe.checks.summary.summary_markdown` takes:

* ``failure="CHECK: why"``: a finding that fails the run before any bound is checked (the model's
  output holds NaN/Inf: ``"finite-output: non-finite embeddings ..."``). Verdict ``"fail"``;
  counted as one more failed check (a JUnit ``<failure>``).
* ``refused="cannot judge ..."``: too few samples to judge a bound
  (:class:`~collapse_probe.checks.verdicts.CannotJudgeError`). Verdict ``"cannot judge"``; a JUnit ``<error>``.
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

from collapse_probe.results.spectrum import json_safe

if TYPE_CHECKING:
    from collapse_probe.checks.verdicts import CheckResult

#: Every value of the JSON report's ``"verdict"``, with the exit code of ``collapse-probe check``.
VERDICTS = {"pass": 0, "fail": 1, "cannot judge": 2, "error": 2}


def verdict(results: Sequence[CheckResult], *, failure: str | None = None, refused: str | None = None,
            error: str | None = None) -> str:
    """``"error"``, else ``"fail"`` (a finding or a failed check), else ``"cannot judge"``, else ``"pass"``."""
    if error:
        return "error"
    if failure or any(not r.passed for r in results):
        return "fail"
    return "cannot judge" if refused else "pass"


def write_report_json(path: str | Path, results: Sequence[CheckResult], *, source: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, Mapping[str, Any]] | None = None, failure: str | None = None,
                      refused: str | None = None, error: str | None = None) -> Path:
    """``{"verdict", "passed", "reason", "n_checks", "n_failed", "n_errors", "checks": [...], "metrics":
    {layer: {...}}, "source"}``.

    ``reason`` is ``failure``, ``refused`` or ``error`` (module docstring), null when every bound
    was judged. A ``failure`` ``"CHECK: why"`` is one more entry of ``checks`` (``passed`` false,
    its ``detail`` the why, no layer, metric, value or bound); ``n_errors`` is 1 for ``refused``
    or ``error``, else 0.
    """
    failed = [r for r in results if not r.passed]
    checks = [{**asdict(r), "message": r.message} for r in results]
    if failure:
        name, _, why = failure.partition(": ")
        checks.append({"check": name, "layer": None, "metric": None, "value": None, "bound": None,
                       "passed": False, "detail": why, "message": f"FAIL {failure}"})
    outcome = verdict(results, failure=failure, refused=refused, error=error)
    document = {
        "verdict": outcome, "passed": outcome == "pass", "reason": failure or refused or error or None,
        "n_checks": len(checks), "n_failed": len(failed) + bool(failure), "n_errors": int(bool(refused or error)),
        "checks": checks, "metrics": dict(metrics or {}), "source": dict(source or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(document), indent=1))
    return path


def write_junit_xml(path: str | Path, results: Sequence[CheckResult], *, suite: str = "collapse-probe",
                    failure: str | None = None, refused: str | None = None, error: str | None = None) -> Path:
    """A JUnit XML report: one ``<testcase>`` per check, a ``<failure>`` for each failed one.

    A ``failure`` ``"CHECK: why"`` adds a testcase ``CHECK`` with a ``<failure>``; ``refused`` a
    testcase ``cannot-judge`` and ``error`` a testcase ``error``, each with an ``<error>`` (never a
    skip, which CI would count as passing).
    """
    # (classname, name, None or (element, type), message)
    cases: list[tuple[str, str, tuple[str, str] | None, str]] = [
        (f"{suite}.{r.layer}", f"{r.check}:{r.metric}", None if r.passed else ("failure", "CollapseCheckFailed"),
         r.message) for r in results
    ]
    if failure:
        cases.append((suite, failure.partition(": ")[0], ("failure", "CollapseCheckFailed"), f"FAIL {failure}"))
    if refused:
        cases.append((suite, "cannot-judge", ("error", "CannotJudge"), refused))
    if error:
        cases.append((suite, "error", ("error", "CheckError"), error))
    kinds = [problem[0] for _, _, problem, _ in cases if problem]
    counts = {"tests": str(len(cases)), "failures": str(kinds.count("failure")), "errors": str(kinds.count("error"))}
    suites = ET.Element("testsuites", name=suite, **counts)
    element = ET.SubElement(suites, "testsuite", name=suite, **counts, skipped="0")
    for classname, name, problem, message in cases:
        case = ET.SubElement(element, "testcase", classname=classname, name=name)
        if problem is not None:
            ET.SubElement(case, problem[0], message=message, type=problem[1]).text = message
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path
