"""``collapse-probe merge``: saved part states (``embeddings --save-state``) -> one spectrum."""

from __future__ import annotations

import click
from collapse_probe_cli import options


@click.command("merge")
@click.argument("states", nargs=-1, required=True, metavar="STATE...")
@click.option("--jackknife", is_flag=True,
              help="Each part is one group of a delete-a-group jackknife: every metric gets a standard error "
                   "(value +- se). Needs 2+ parts; meaningful when the parts are alike (random splits, shuffled rows).")
@click.option("--name", help="Label of the merged spectrum [default: the parts' label].")
@click.option("--out", type=click.Path(file_okay=False), default="collapse_probe_out", show_default=True,
              metavar="DIR", help="Folder for spectrum.json/.csv/.png; written only after every part is checked.")
@options.as_json
@options.quiet
def merge(states: tuple[str, ...], jackknife: bool, name: str | None, out: str, as_json: bool, quiet: bool) -> None:
    """Merge part states into the spectrum of all their rows (the Chan merge: exact for any split).

    Parts that overlap (the same rows of a shard twice) or were made with different options
    (center, normalize, dtype, columns) are refused, and nothing is written. The same files in
    any order give the same result.

    \b
    Examples:
      collapse-probe merge parts/*.pt --out merged
      collapse-probe merge parts/*.pt --jackknife --json --out merged
    """
    from collapse_probe.embeddings import merge_states
    from collapse_probe.pipeline.outputs import (
        ProbeResult,
        format_table,
        json_report,
        write_outputs,
    )

    spectrum = merge_states(list(states), jackknife=jackknife, name=name)
    options.ensure_writable_folder(out)
    provenance = spectrum.extra["embeddings"]
    label = spectrum.layer or "embeddings"
    result = ProbeResult({label: spectrum}, source={"merged_states": list(provenance["merged_parts"]),
                                                    "shape": [provenance["rows"], provenance["dim"]]})
    if as_json:
        click.echo(json_report(result))
    elif not quiet:
        click.echo(format_table(result.spectra))
    paths = write_outputs(result, out)
    if not quiet:
        if provenance["norms"]["unit_norm"]:
            click.echo(f"Note: {label}: {provenance['norms']['note']}", err=True)
        click.echo(f"merged {len(states)} part(s), {provenance['rows']} rows; wrote "
                   f"{', '.join(str(p) for p in paths.values())}", err=True)
