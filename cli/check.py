"""``collapse-probe check``: fail a CI job when an encoder has collapsed (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import click
from collapse_probe_cli import options
from collapse_probe_cli.errors import EXIT_CHECK_FAILED


@click.command("check")
@click.argument("source", metavar="CKPT|SPECTRUM.json", type=click.Path())
@click.option("--min-effective-rank", type=float, help="Fail when a layer's effective rank is below this.")
@click.option("--min-rankme", type=float, help="Fail when a layer's RankMe is below this.")
@click.option("--max-collapsed-fraction", type=float,
              help="Fail when more than this fraction of a layer's d dimensions is collapsed (0..1).")
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="SPECTRUM.json",
              help="A saved spectrum to compare with (needs --max-drop and/or --max-drop-sigma).")
@click.option("--max-drop", type=float, metavar="FRACTION",
              help="Fail when effective rank or RankMe falls more than this fraction below the baseline.")
@click.option("--max-drop-sigma", type=float, metavar="Z",
              help="Fail only when the drop below the baseline also exceeds Z combined standard errors "
                   "(both spectra probed with --groups K); alone, fail on any drop beyond Z of them.")
@click.option("--report-json", type=click.Path(dir_okay=False), metavar="FILE", help="Write the results as JSON.")
@click.option("--junit-xml", type=click.Path(dir_okay=False), metavar="FILE", help="Write a JUnit XML report.")
@click.option("--summary-md", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the verdict as a Markdown table (bound, value, required, pass/fail, samples, load "
                   "report). When $GITHUB_STEP_SUMMARY is set (GitHub Actions), it is appended there too.")
@options.probe_options
@options.quiet
def check(source: str, min_effective_rank: float | None, min_rankme: float | None,
          max_collapsed_fraction: float | None, baseline: str | None, max_drop: float | None,
          max_drop_sigma: float | None, report_json: str | None, junit_xml: str | None, summary_md: str | None,
          quiet: bool, **values) -> None:
    """Check collapse bounds on CKPT (probed on --data) or on a saved spectrum JSON.

    Exit code 0 when every check passes, 1 when one fails (each failure is printed with its
    measured value and bound) or the model's output holds NaN/Inf (unless --skip-nonfinite),
    2 for a usage or input error. A saved spectrum.json (written by
    `collapse-probe spectrum --out`, or by a training job) needs no model, no data and no GPU.

    N images show at most N - 1 of a layer's d dimensions. When N - 1 < d, a verdict is given
    only if it holds whatever the unshown dimensions do; otherwise the check says it cannot be
    judged ("need at least d+1 images, got N") and exits 2: give more images (--max-samples).

    \b
    Examples:
      collapse-probe check ckpt.pt --data val/ --min-effective-rank 50 --junit-xml collapse.xml
      collapse-probe check probe_out/spectrum.json --max-collapsed-fraction 0.25
      collapse-probe check new/spectrum.json --baseline main/spectrum.json --max-drop 0.1
      collapse-probe check new/spectrum.json --baseline main/spectrum.json --max-drop 0.05 --max-drop-sigma 3
    """
    from collapse_probe.checks import (
        CannotJudgeError,
        run_checks,
        validate_bounds,
        write_junit_xml,
        write_report_json,
    )
    from collapse_probe.pipeline import load_or_probe
    from collapse_probe.reports import is_spectrum_file, load_spectra

    validate_bounds(min_effective_rank=min_effective_rank, min_rankme=min_rankme,
                    max_collapsed_fraction=max_collapsed_fraction, has_baseline=baseline is not None,
                    max_drop=max_drop, max_drop_sigma=max_drop_sigma)
    probe_values, _ = options.split_probe_values(values)
    config = None if is_spectrum_file(source) else options.probe_config(probe_values, quiet_run=quiet)
    from collapse_probe.errors import NonFiniteEmbeddingError

    try:
        result = load_or_probe(source, config)
    except NonFiniteEmbeddingError as error:  # NaN/Inf model output is a finding (exit 1), not bad input
        click.echo(f"FAIL finite-output: {error}")
        _summarise(summary_md, source=source, failure=f"finite-output: {error}")
        click.echo("0/1 checks passed; the model's output is not finite")
        click.get_current_context().exit(EXIT_CHECK_FAILED)
    reference = load_spectra(baseline).spectra if baseline is not None else None
    try:
        results = run_checks(result.spectra, min_effective_rank=min_effective_rank, min_rankme=min_rankme,
                             max_collapsed_fraction=max_collapsed_fraction, baseline=reference, max_drop=max_drop,
                             max_drop_sigma=max_drop_sigma, sample_name="samples" if config is None else "images")
    except CannotJudgeError as error:  # still exit 2, but the CI summary says why
        _summarise(summary_md, source=source, spectra=result.spectra, report=result.report, refused=str(error))
        raise
    _summarise(summary_md, source=source, spectra=result.spectra, report=result.report, results=results)
    if report_json:
        write_report_json(report_json, results, source=result.source,
                          metrics={n: s.metrics() for n, s in result.spectra.items()})
    if junit_xml:
        write_junit_xml(junit_xml, results)
    failed = [r for r in results if not r.passed]
    for r in results:
        if not quiet or not r.passed:
            click.echo(r.message)
    click.echo(f"{len(results) - len(failed)}/{len(results)} checks passed" + ("" if not failed else "; collapse detected"))
    if failed:
        click.get_current_context().exit(EXIT_CHECK_FAILED)


def _summarise(path: str | None, *, source: str, spectra=None, report=None, results=(), refused=None,
               failure=None) -> None:
    """The Markdown verdict to --summary-md and, when set, $GITHUB_STEP_SUMMARY (collapse_probe.check_summary)."""
    import os

    from collapse_probe.check_summary import STEP_SUMMARY_ENV, summary_markdown, write_summary

    if path is None and not os.environ.get(STEP_SUMMARY_ENV):
        return
    text = summary_markdown(results, spectra, source=source, load_report=report.summary() if report else None,
                            refused=refused, failure=failure)
    write_summary(text, path)
