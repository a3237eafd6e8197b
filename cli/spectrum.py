"""``collapse-probe spectrum``: one checkpoint, one folder of images -> table, JSON, CSV, PNG."""

from __future__ import annotations

import click
from collapse_probe_cli import options


@click.command("spectrum")
@click.argument("checkpoint", type=click.Path())
@options.probe_options
@options.out
@options.as_json
@options.quiet
@click.option("--report-html", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Also write a self-contained HTML report to FILE: the plot inline, the table, the load report "
                   "and the conventions (no script, no external request).")
def spectrum(checkpoint: str, out: str | None, as_json: bool, quiet: bool, report_html: str | None, **values) -> None:
    """Covariance spectrum of CHECKPOINT's embeddings on a folder of images (or texts).

    Prints one row per probed layer (effective rank, RankMe, collapsed dims, the dims too few
    images cannot show, stable rank, alpha-ReQ) and writes spectrum.json, spectrum.csv and the paper's sorted log-spectrum plot
    spectrum.png to --out. By default the representation (the backbone output, i.e. the input of
    the final classifier) and, when the checkpoint holds a projector, the projector output are
    probed, on one plot.

    \b
    Examples:
      collapse-probe spectrum run/checkpoint.pt --data imagenet/val --out probe_out
      collapse-probe spectrum resnet50.pth --arch resnet50 --data val/ --max-samples 10000
      collapse-probe spectrum r18.safetensors --arch resnet18 --data builtin:digits \\
          --image-size 32 --layer layer3 --layer fc --json
      collapse-probe spectrum nan_prone.pt --arch resnet18 --data val/ --skip-nonfinite
      collapse-probe spectrum dinov2_folder/ --data val/          # a save_pretrained folder
      collapse-probe spectrum bert_folder/ --data sentences.txt  # one text per line
      collapse-probe spectrum ckpt.pt --data val/ --report-html report.html   # one file to share
      collapse-probe spectrum vit_b_16.pth --arch vit_b_16 --data val/ --layer encoder --tokens patch
      collapse-probe spectrum run/checkpoint.pt --data imagenet/val --per-class --class-scatter
    """
    from collapse_probe.pipeline.checkpoints import probe_checkpoint
    from collapse_probe.pipeline.outputs import (
        format_table,
        json_report,
        nonfinite_notes,
        sample_limit_notes,
        write_outputs,
    )
    from collapse_probe.results.notes import class_table, token_norm_notes

    probe_values, _ = options.split_probe_values(values)
    config = options.probe_config(probe_values, quiet_run=quiet)
    result = probe_checkpoint(checkpoint, config)
    if not quiet and result.report is not None:
        click.echo(result.report.summary(), err=True)
    skipped = result.source.get("n_unreadable_skipped", 0)
    if skipped and not quiet:
        click.echo(f"skipped {skipped} unreadable image(s) of {result.source['n_images']}", err=True)
    if as_json:
        click.echo(json_report(result))
    elif not quiet:
        click.echo(format_table(result.spectra, result.roles))
        for line in [*token_norm_notes(result.spectra), *([class_table(result.classes)] if result.classes else [])]:
            click.echo(line)
    if not quiet:
        for note in [*nonfinite_notes(result.spectra), *sample_limit_notes(result.spectra, "texts" if "n_texts" in result.source else "images")]:
            click.echo(f"Warning: {note}", err=True)
    if out is not None:
        paths = write_outputs(result, out)
        if not quiet:
            click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if report_html is not None:
        from collapse_probe.pipeline._track_report import write_probe_report

        write_probe_report([result], report_html)
        if not quiet:
            click.echo(f"wrote {report_html}", err=True)
