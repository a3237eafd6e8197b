"""``collapse-probe compare``: several checkpoints or saved spectra on one plot and in one table."""

from __future__ import annotations

import json
from pathlib import Path

import click
from collapse_probe_cli import options


@click.command("compare")
@click.argument("sources", nargs=-1, required=True, metavar="CKPT|SPECTRUM.json...")
@options.probe_options_per_checkpoint
@options.out
@options.as_json
@options.quiet
@click.option("--relative", is_flag=True, help="Plot each spectrum divided by its largest eigenvalue.")
@click.option("--report-html", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Also write a self-contained HTML report to FILE: the overlay plot inline, the table, each "
                   "checkpoint's load report and the conventions (no script, no external request).")
def compare(sources: tuple[str, ...], out: str | None, as_json: bool, quiet: bool, relative: bool,
            report_html: str | None, **values) -> None:
    """Compare the spectra of several checkpoints and/or saved spectrum JSON files.

    Checkpoints are probed together in one pass over --data (each image decoded once), and
    spectra of equal dimension are solved in one batched eigen-solve; each checkpoint's load
    report goes to stderr, as in `spectrum`. Writes compare.png (one overlay plot), compare.csv
    and compare.json to --out. --arch given once applies to every checkpoint; given once per
    checkpoint, it applies to them in order.

    \b
    Examples:
      collapse-probe compare simclr.pt directclr.pt --data builtin:digits --image-size 32 --out cmp
      collapse-probe compare runA/spectrum.json runB/spectrum.json --out cmp
      collapse-probe compare r18.pth r50.pth --arch resnet18 --arch resnet50 --data val/ --out cmp
      collapse-probe compare a.pt b.pt --data val/ --report-html cmp.html   # one file to share
    """
    from collapse_probe.pipeline.checkpoints import compare_sources
    from collapse_probe.pipeline.outputs import (
        finite_metrics,
        format_table,
        nonfinite_notes,
        sample_limit_notes,
        write_comparison,
    )

    probe_values, _ = options.split_probe_values(values)
    archs = probe_values.pop("arch")
    needs_data = any(not s.lower().endswith(".json") for s in sources)
    config = options.probe_config({**probe_values, "arch": None}, quiet_run=quiet) if needs_data else None
    comparison = compare_sources(sources, config, archs)
    spectra, roles = comparison.spectra, comparison.roles
    if not quiet:
        for result in comparison.probed:
            if result.report is not None:
                click.echo(result.report.summary(), err=True)
        sizes = {Path(str(r.source.get("checkpoint", ""))).name: r.source.get("image_size") for r in comparison.probed}
        if len(set(sizes.values())) > 1:  # no --image-size: each checkpoint at the size it was trained at
            click.echo("each checkpoint probed at its own size: " + ", ".join(f"{n} {s} px" for n, s in sizes.items()),
                       err=True)
        source = comparison.probed[0].source if comparison.probed else {}
        if source.get("n_unreadable_skipped"):  # one pass over the images serves every checkpoint
            click.echo(f"skipped {source['n_unreadable_skipped']} unreadable image(s) of {source['n_images']}", err=True)
    if as_json:
        click.echo(json.dumps({name: finite_metrics(s) for name, s in spectra.items()}))
    elif not quiet:
        click.echo(format_table(spectra, roles))
    if not quiet:
        for note in [*nonfinite_notes(spectra), *sample_limit_notes(spectra, "samples" if config is None else "images")]:
            click.echo(f"Warning: {note}", err=True)
    if out is not None:
        sources = {str(r.source.get("checkpoint", i)): r.source for i, r in enumerate(comparison.probed)}
        paths = write_comparison(spectra, out, relative=relative, roles=roles, sources=sources)
        if not quiet:
            click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if report_html is not None:
        from collapse_probe.pipeline._track_report import write_probe_report

        write_probe_report(comparison.probed, report_html, spectra=spectra, roles=roles)
        if not quiet:
            click.echo(f"wrote {report_html}", err=True)
