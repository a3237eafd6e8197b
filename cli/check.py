"""``collapse-probe check``: fail a CI job when an encoder has collapsed (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import click
from collapse_probe_cli import options
from collapse_probe_cli.errors import EXIT_CHECK_FAILED

from collapse_probe.errors import CollapseProbeError


@click.command("check")
@click.argument("source", metavar="CKPT|SPECTRUM.json", type=click.Path())
@click.option("--min-effective-rank", type=float, help="Fail when a layer's effective rank is below this.")
@click.option("--min-rankme", type=float, help="Fail when a layer's RankMe is below this.")
@click.option("--min-class-effective-rank", type=float, metavar="BOUND",
              help="Probe per class (implies --per-class) and fail when any class's effective rank is below "
                   "BOUND; classes with too few images to judge are named, never passed.")
@click.option("--max-collapsed-fraction", type=float,
              help="Fail when more than this fraction of a layer's d dimensions is collapsed (0..1).")
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="SPECTRUM.json",
              help="A saved spectrum to compare with (needs --max-drop and/or --max-drop-sigma).")
@click.option("--max-drop", type=float, metavar="FRACTION",
              help="Fail when effective rank or RankMe falls more than this fraction below the baseline.")
@click.option("--max-drop-sigma", type=float, metavar="Z",
              help="Fail only when the drop below the baseline also exceeds Z standard errors (both spectra "
                   "probed with --groups K; paired when they share data and groups); alone, fail on any drop "
                   "beyond Z of them.")
@click.option("--report-json", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Write the verdict and results as JSON (also when the run fails, cannot judge or stops on an error).")
@click.option("--junit-xml", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Write a JUnit XML report (also when the run fails, cannot judge or stops on an error).")
@click.option("--summary-md", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Write the verdict as a Markdown table (bound, value, required, pass/fail, samples, load "
                   "report). When $GITHUB_STEP_SUMMARY is set (GitHub Actions), it is appended there too.")
@options.probe_options
@options.quiet
def check(source: str, min_effective_rank: float | None, min_rankme: float | None,
          min_class_effective_rank: float | None, max_collapsed_fraction: float | None, baseline: str | None, max_drop: float | None,
          max_drop_sigma: float | None, report_json: str | None, junit_xml: str | None, summary_md: str | None,
          quiet: bool, **values) -> None:
    """Check collapse bounds on CKPT (probed on --data) or on a saved spectrum JSON.

    Exit code 0 when every check passes, 1 when one fails (each failure is printed with its
    measured value and bound) or the model's output holds NaN/Inf (unless --skip-nonfinite),
    2 for a usage or input error. A saved spectrum.json (written by
    `collapse-probe spectrum --out`, or by a training job) needs no model, no data and no GPU.

    N images show at most N - 1 of a layer's d dimensions. When N - 1 < d, a verdict is given
    only if it holds whatever the unshown dimensions do; otherwise the check says it cannot be
    judged ("need at least d+1 images, got N"): give more images (--max-samples). Every other
    check is still judged and printed; a judged FAIL exits 1, else "cannot judge" exits 2.

    A --baseline of other conventions (--normalize, centring, ddof) or another dimension is
    refused (exit 2, naming what differs); one of more than 2x more or fewer samples is a
    WARNING. --max-drop-sigma pairs the error bars (the jackknife of the difference) when both
    spectra were probed with the same --groups K on the same data; otherwise it uses the
    combined SE and says the bars are unpaired.

    Every report asked for is written whatever the outcome (atomically), so CI never reads a
    stale or half-written one: NaN/Inf output is a failed `finite-output` check, a bound that
    too few images cannot judge a "cannot judge" check (a JUnit <error>), any other error that
    stops the run an "error" verdict. The report files' folders are created and checked before
    the model is loaded.

    \b
    Examples:
      collapse-probe check ckpt.pt --data val/ --min-effective-rank 50 --junit-xml collapse.xml
      collapse-probe check ckpt.pt --data val/ --min-class-effective-rank 8   # every class judged
      collapse-probe check probe_out/spectrum.json --max-collapsed-fraction 0.25
      collapse-probe check new/spectrum.json --baseline main/spectrum.json --max-drop 0.1
      collapse-probe check new/spectrum.json --baseline main/spectrum.json --max-drop 0.05 --max-drop-sigma 3
    """
    from collapse_probe.errors import NonFiniteEmbeddingError

    reports = _Reports(report_json, junit_xml, summary_md, source)
    try:
        result, run = _judge(
            source, values, quiet, min_class_effective_rank, min_effective_rank=min_effective_rank, min_rankme=min_rankme,
            max_collapsed_fraction=max_collapsed_fraction, baseline=baseline, max_drop=max_drop,
            max_drop_sigma=max_drop_sigma)
    except NonFiniteEmbeddingError as error:  # NaN/Inf model output is a finding (exit 1), not bad input
        click.echo(f"FAIL finite-output: {error}")
        click.echo("0/1 checks passed; the model's output is not finite")
        reports.write(failure=f"finite-output: {error}")
        click.get_current_context().exit(EXIT_CHECK_FAILED)
    except BaseException as error:  # bad input, a bug or Ctrl-C: no report from an earlier run may survive
        with contextlib.suppress(Exception):  # the error that stopped the run is the one to show
            reports.write(error=_reason(error), best_effort=True)
        raise
    _print_run(run, quiet)
    reports.write(result, run)
    if run.failed:  # a judged FAIL beats "cannot judge": exit 1 whatever could not be judged
        click.get_current_context().exit(EXIT_CHECK_FAILED)
    refusal = run.error()
    if refusal is not None:  # nothing failed, something could not be judged: exit 2, one line on stderr
        raise refusal


def _print_run(run, quiet: bool) -> None:
    """Every judged check (only failures with --quiet), every bound that cannot be judged, every
    warning, then the count, on stdout."""
    for r in run.results:
        if not quiet or not r.passed:
            click.echo(r.message)
    for refusal in run.refusals:
        click.echo(refusal.message)
    for text in run.warnings:
        click.echo(f"WARNING {text}")
    n, failed = len(run.results), len(run.failed)
    parts = [f"{n - failed}/{n} checks passed"] if n else []
    if run.refusals:
        parts.append(f"{len(run.refusals)} cannot be judged")
    click.echo(", ".join(parts) + ("; collapse detected" if failed else ""))


def _judge(source: str, values: dict, quiet: bool, class_bound: float | None, *, baseline: str | None, **bounds):
    """Probe (or load) ``source`` and run the checks: ``(ProbeResult, CheckRun)`` (judged results,
    the bounds the samples cannot judge, warnings); with ``class_bound`` every class's effective
    rank is judged too, as ``min-class-effective-rank`` on ``LAYER[class K]``."""
    from collapse_probe.checks.verdicts import CheckRun, Refusal, evaluate_checks, validate_bounds
    from collapse_probe.pipeline.checkpoints import load_or_probe
    from collapse_probe.pipeline.outputs import is_spectrum_file, load_spectra

    if class_bound is not None:
        if is_spectrum_file(source):
            raise CollapseProbeError("--min-class-effective-rank probes per class: give a checkpoint and --data, "
                                     "not a saved spectrum")
        values["per_class"] = True
    if class_bound is None or any(v is not None for v in bounds.values()) or baseline is not None:
        validate_bounds(**bounds, has_baseline=baseline is not None)  # a class bound alone is a check too
    probe_values, _ = options.split_probe_values(values)
    config = None if is_spectrum_file(source) else options.probe_config(probe_values, quiet_run=quiet)
    result = load_or_probe(source, config)
    reference = load_spectra(baseline) if baseline is not None else None
    sample_name = "samples" if config is None else "images"
    run = CheckRun()
    if any(v is not None for v in bounds.values()) or baseline is not None:
        run = evaluate_checks(result.spectra, **bounds, baseline=None if reference is None else reference.spectra,
                              sample_name=sample_name, source=result.source,
                              baseline_source=None if reference is None else reference.source)
    if class_bound is not None:
        per_class = {f"{layer}[class {label}]": s for layer, classes in result.classes.items()
                     for label, s in classes.classes.items()}
        judged = evaluate_checks(per_class, min_effective_rank=class_bound, sample_name=sample_name) \
            if per_class else CheckRun()
        rename = {"check": "min-class-effective-rank"}
        lonely = [Refusal("min-class-effective-rank", f"{layer}[class {label}]", "effective_rank", float("nan"),
                          class_bound, f"{n} {sample_name[:-1] if n == 1 else sample_name}: no covariance; "
                          f"need at least 2", 2, n)
                  for layer, classes in result.classes.items() for label, n in classes.too_few.items()]
        run = CheckRun(run.results + [dataclasses.replace(r, **rename) for r in judged.results],
                       run.refusals + [dataclasses.replace(r, **rename) for r in judged.refusals] + lonely,
                       run.warnings + judged.warnings)
    return result, run


def _reason(error: BaseException) -> str:
    """The one line that run_cli prints for ``error``, for the reports of a run it stopped."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if isinstance(error, (CollapseProbeError, FileNotFoundError, ValueError, click.ClickException)):
        return text or type(error).__name__
    return f"internal error: {type(error).__name__}: {text}"


@dataclass(frozen=True)
class _Reports:
    """The report files of one run, each written with the run's outcome (collapse_probe.checks.reports)."""

    report_json: str | None
    junit_xml: str | None
    summary_md: str | None
    source: str

    def write(self, result=None, run=None, *, failure: str | None = None, error: str | None = None,
              best_effort: bool = False) -> None:
        """Write every requested report; one that cannot be written is removed, never left stale,
        and named in a one-line error (unless ``best_effort``: another error is already on its way)."""
        import os

        from collapse_probe.checks.reports import write_junit_xml, write_report_json
        from collapse_probe.checks.summary import STEP_SUMMARY_ENV, summary_markdown, write_summary
        from collapse_probe.pipeline.outputs import is_spectrum_file

        results, refusals, warnings = (run.results, run.refusals, run.warnings) if run is not None else ((), (), ())
        outcome = {"failure": failure, "error": error, "refusals": refusals, "warnings": warnings}
        if result is not None:
            source, metrics = result.source, {n: s.metrics() for n, s in result.spectra.items()}
        else:
            source, metrics = {"spectrum_file" if is_spectrum_file(self.source) else "checkpoint": self.source}, {}
        writers = []
        if self.report_json:
            writers.append(("--report-json", self.report_json, lambda: write_report_json(
                self.report_json, results, source=source, metrics=metrics, **outcome)))
        if self.junit_xml:
            writers.append(("--junit-xml", self.junit_xml, lambda: write_junit_xml(self.junit_xml, results, **outcome)))
        step_summary = os.environ.get(STEP_SUMMARY_ENV)
        if self.summary_md or step_summary:
            text = summary_markdown(results, result.spectra if result else None, source=self.source,
                                    load_report=result.report.summary() if result and result.report else None,
                                    **outcome)
        if self.summary_md:
            writers.append(("--summary-md", self.summary_md,
                            lambda: write_summary(text, self.summary_md, step_summary=False)))
        if step_summary:  # appended to, so never stale, and never removed: earlier steps wrote there too
            writers.append((f"${STEP_SUMMARY_ENV}", None, lambda: write_summary(text)))
        problems = []
        for option, path, write in writers:
            try:
                write()
            except OSError as problem:
                problems.append(f"{option} {path or step_summary}: cannot write ({problem.strerror or problem})")
                if path is not None:
                    with contextlib.suppress(OSError):
                        Path(path).unlink(missing_ok=True)
        if problems and not best_effort:
            raise CollapseProbeError("; ".join(problems))
