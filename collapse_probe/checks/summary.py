"""The verdict of ``collapse-probe check`` as a Markdown table, for a CI run's summary page.

``collapse-probe check --summary-md FILE`` writes it to FILE and, when the environment variable
``GITHUB_STEP_SUMMARY`` is set (GitHub Actions sets it for every step), appends the same text to
that file, so the job's summary page shows each bound, the measured value, pass/fail, the sample
count and how the checkpoint was loaded.

>>> import torch
>>> from collapse_probe.checks.verdicts import run_checks
>>> from collapse_probe.results.spectrum import Spectrum
>>> spectra = {"fc": Spectrum.from_embeddings(torch.randn(500, 4, dtype=torch.float64))}
>>> print(summary_markdown(run_checks(spectra, min_effective_rank=2.0), spectra, source="ckpt.pt"))  # doctest: +ELLIPSIS
### collapse-probe check: PASS (1/1 checks passed)
<BLANKLINE>
Source: `ckpt.pt`
<BLANKLINE>
| check | layer | value | required | result | samples |
|:--|:--|--:|--:|--:|--:|
| min-effective-rank | fc | 3.9... | >= 2 | ✅ pass | 500 |
<BLANKLINE>
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from collapse_probe._utils.files import atomic_write_text
from collapse_probe.checks.reports import refused_line
from collapse_probe.checks.reports import verdict as run_verdict
from collapse_probe.results.table import render_table

if TYPE_CHECKING:
    from collapse_probe.checks.verdicts import CheckResult, Refusal
    from collapse_probe.results.spectrum import Spectrum

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def _cell(text: object) -> str:
    """One line: no newlines inside a Markdown paragraph."""
    return str(text).replace("\n", " ")


def _rows(results: Sequence[CheckResult], refusals: Sequence[Refusal], spectra: Mapping[str, Spectrum]) -> list[str]:
    """The table: one row per judged check, then one per bound that cannot be judged."""
    rows = []
    for r in results:
        op = "<=" if r.check.startswith("max-collapsed") else ">="
        samples = spectra[r.layer].n_samples if r.layer in spectra else ""
        rows.append((r.check, r.layer, r.detail or f"{r.value:.4g}", f"{op} {r.bound:.4g}",
                     "✅ pass" if r.passed else "❌ fail", samples))
    for r in refusals:
        op = "<=" if r.check.startswith("max-collapsed") else ">="
        rows.append((r.check, r.layer, f"{r.value:.4g}", "" if r.bound is None else f"{op} {r.bound:.4g}",
                     "⚠️ cannot judge", f"{r.n_samples} (need {r.needed_samples})"))
    header = ("check", "layer", "value", "required", "result", "samples")
    return [render_table(header, rows, left=2, style="markdown"), ""]


def summary_markdown(
    results: Sequence[CheckResult],
    spectra: Mapping[str, Spectrum] | None = None,
    *,
    source: str = "",
    load_report: str | None = None,
    refused: str | None = None,
    failure: str | None = None,
    error: str | None = None,
    refusals: Sequence[Refusal] = (),
    warnings: Sequence[str] = (),
) -> str:
    """The Markdown of one check run.

    Args:
        results: the judged checks (empty when the run failed or stopped before checking).
        spectra: layer -> Spectrum, for the sample count of each row and a per-layer line when
            a bound could not be judged.
        source: the checkpoint or spectrum file checked.
        load_report: :meth:`LoadReport.summary` of the checkpoint, shown in a collapsed block.
        refused: why bounds cannot be judged (``CannotJudgeError``; derived from ``refusals``
            when not given); the verdict is CANNOT JUDGE unless a judged check failed.
        failure: a finding that fails the run before any bound is checked (non-finite output).
        error: why the run stopped (bad input, a bug, an interrupt); the verdict is then ERROR.
        refusals: the bounds that cannot be judged (:class:`~collapse_probe.checks.verdicts.Refusal`),
            one table row each.
        warnings: lines shown as **Warning:** (a baseline of another sample count, unpaired error bars).
    """
    spectra = spectra or {}
    refused = refused_line(refusals, refused)
    failed = [r for r in results if not r.passed]
    verdict = run_verdict(results, failure=failure, refused=refused, error=error).upper()
    judged = f"{len(results) - len(failed)}/{len(results)} checks passed" if results else ""
    counted = ", ".join(filter(None, [judged, f"{len(refusals)} cannot be judged" if refusals else ""]))
    lines = [f"### collapse-probe check: {verdict}" + (f" ({counted})" if counted else ""), ""]
    if source:
        lines += [f"Source: `{source}`", ""]
    if failure:
        lines += [f"**Failed:** {_cell(failure)}", ""]
    if refused:
        lines += [f"**Cannot judge** ({'a judged check failed: exit 1' if failed else 'exit 2'}, more samples "
                  f"needed): {_cell(refused)}", ""]
    if error:
        lines += [f"**Error** (no verdict): {_cell(error)}", ""]
    lines += [line for text in warnings for line in (f"**Warning:** {_cell(text)}", "")]
    if results or refusals:
        lines += _rows(results, refusals, spectra)
    if spectra and (refused or not results):
        rows = [(n, s.dim, s.n_samples, f"{s.effective_rank:.4g}") for n, s in spectra.items()]
        lines += [render_table(("layer", "dim", "samples", "effective rank"), rows, style="markdown"), ""]
    if load_report:
        lines += ["<details><summary>Load report</summary>", "", "```", load_report.strip(), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_summary(text: str, path: str | os.PathLike | None = None, *, step_summary: bool = True) -> list[Path]:
    """Write ``text`` to ``path`` (when given; atomically: a temporary file, then ``os.replace``) and
    append it to ``$GITHUB_STEP_SUMMARY`` (when set and ``step_summary``)."""
    written = []
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(target, text))
    step_summary_path = os.environ.get(STEP_SUMMARY_ENV) if step_summary else None
    if step_summary_path:
        with open(step_summary_path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
        written.append(Path(step_summary_path))
    return written
