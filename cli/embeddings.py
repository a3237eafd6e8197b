"""``collapse-probe embeddings``: the spectrum report for precomputed (N, d) embeddings."""

from __future__ import annotations

from pathlib import Path

import click
from collapse_probe_cli import options


@click.command("embeddings")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--key", help="Tensor name in a .pt/.safetensors file holding several (a file with several is "
                            "refused without it, unless one is called 'embeddings').")
@click.option("--name", help="Label of this spectrum [default: the file name without extension].")
@click.option("--center/--no-center", default=True, show_default=True,
              help="Subtract the mean (covariance) or not (raw second moment).")
@options.normalize
@options.skip_nonfinite
@options.out
@options.as_json
@options.quiet
def embeddings(file: str, key: str | None, name: str | None, center: bool, normalize: bool, skip_nonfinite: bool,
               out: str | None, as_json: bool, quiet: bool) -> None:
    """The spectrum report for an (N, d) array of embeddings in FILE (.npy, .pt, .safetensors).

    \b
    Examples:
      collapse-probe embeddings val_embeddings.npy --out probe_out
      collapse-probe embeddings feats.safetensors --key projector --normalize --json
      collapse-probe embeddings feats.pt --key backbone --skip-nonfinite
    """
    from collapse_probe.pipeline.outputs import (
        ProbeResult,
        format_table,
        json_report,
        load_embeddings,
        nonfinite_notes,
        sample_limit_notes,
        write_outputs,
    )
    from collapse_probe.results.spectrum import Spectrum

    label = name or Path(file).stem
    z = load_embeddings(file, key)
    spectrum = Spectrum.from_embeddings(z, center=center, normalize=normalize, layer=label,
                                        skip_nonfinite=skip_nonfinite)
    result = ProbeResult({label: spectrum},
                         source={"embeddings": str(file), "shape": list(z.shape)})
    if as_json:
        click.echo(json_report(result))
    elif not quiet:
        click.echo(format_table(result.spectra))
    if not quiet:
        for note in [*nonfinite_notes(result.spectra), *sample_limit_notes(result.spectra)]:
            click.echo(f"Warning: {note}", err=True)
    if out is not None:
        paths = write_outputs(result, out)
        if not quiet:
            click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
