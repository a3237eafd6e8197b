"""``collapse-probe compare``: several checkpoints or saved spectra on one plot and in one table."""

from __future__ import annotations

import json

import click
from collapse_probe_cli import options


@click.command("compare")
@click.argument("sources", nargs=-1, required=True, metavar="CKPT|SPECTRUM.json...")
@options.probe_options
@options.out
@options.as_json
@options.quiet
@click.option("--relative", is_flag=True, help="Plot each spectrum divided by its largest eigenvalue.")
def compare(sources: tuple[str, ...], out: str | None, as_json: bool, quiet: bool, relative: bool, **values) -> None:
    """Compare the spectra of several checkpoints and/or saved spectrum JSON files.

    Checkpoints are probed together in one pass over --data (each image decoded once), and
    spectra of equal dimension are solved in one batched eigen-solve. Writes compare.png (one
    overlay plot), compare.csv and compare.json to --out.

    \b
    Examples:
      collapse-probe compare simclr.pt directclr.pt --data builtin:digits --image-size 32 --out cmp
      collapse-probe compare runA/spectrum.json runB/spectrum.json --out cmp
    """
    from collapse_probe.pipeline import compare_sources
    from collapse_probe.reports import (
        finite_metrics,
        format_table,
        sample_limit_notes,
        write_comparison,
    )

    probe_values, _ = options.split_probe_values(values)
    needs_data = any(not s.lower().endswith(".json") for s in sources)
    config = options.probe_config(probe_values, quiet_run=quiet) if needs_data else None
    spectra, roles = compare_sources(sources, config)
    if as_json:
        click.echo(json.dumps({name: finite_metrics(s) for name, s in spectra.items()}))
    elif not quiet:
        click.echo(format_table(spectra, roles))
    if not quiet:
        for note in sample_limit_notes(spectra, "samples" if config is None else "images"):
            click.echo(note, err=True)
    if out is not None:
        paths = write_comparison(spectra, out, relative=relative)
        if not quiet:
            click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
