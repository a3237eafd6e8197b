"""``collapse-probe lidar``: any checkpoint ``spectrum`` takes, q seeded augmented views of each image -> LiDAR per layer."""

from __future__ import annotations

import json
from pathlib import Path

import click
from collapse_probe_cli import options


@click.command("lidar")
@click.argument("checkpoint", type=click.Path())
@options.probe_options
@click.option("--views", type=click.IntRange(min=2), default=8, show_default=True,
              help="Augmented views q of each image (each image is one LDA class of q members).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the augmentations; the views of an image depend only on it and the image.")
@click.option("--delta", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Ridge added to the within-class covariance Sw (stable-pretraining's default).")
@click.option("--eps", type=click.FloatRange(min=0), default=1e-8, show_default=True,
              help="Added to every LDA eigenvalue before normalising (stable-pretraining's default).")
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR", callback=options.check_out_folder,
              help="Also write DIR/lidar.json (every eigenvalue, the conventions, the load report).")
@options.as_json
@options.quiet
def lidar(checkpoint: str, views: int, seed: int, delta: float, eps: float, out: str | None, as_json: bool,
          quiet: bool, **values) -> None:
    """LiDAR (Thilak et al., ICLR 2024) of CHECKPOINT's embeddings on a folder of images.

    CHECKPOINT is anything `spectrum` takes: a trainer checkpoint, a state_dict (with --arch or
    detected), TorchScript, or a Hugging Face save_pretrained folder (its image processor's rescale
    and normalisation are applied). Each image is one class whose members are --views augmented
    views (the paper's augmentations, view 1 and view 2 alternating, seeded by --seed); LiDAR is the
    effective rank of the LDA matrix Sw^-1/2 Sb Sw^-1/2, in stable-pretraining's conventions
    (docs/metrics.md). It can reach at most min(dim, images - 1). Prints one row per layer
    (default: the representation and, with a projector, the projector output); --json prints
    every eigenvalue and the conventions; --out writes them to DIR/lidar.json.

    \b
    Examples:
      collapse-probe lidar run/checkpoint.pt --data builtin:digits --views 8 --out lidar_out
      collapse-probe lidar resnet50.pth --arch resnet50 --data val/ --views 16 --max-samples 2000 --json
      collapse-probe lidar dinov2_folder/ --data val/ --pool cls --views 8
    """
    from collapse_probe._utils.files import atomic_write_text
    from collapse_probe.pipeline.lidar import LidarSettings, lidar_checkpoint
    from collapse_probe.results.table import render_table

    probe_values, _ = options.split_probe_values(values)
    config = options.probe_config(probe_values, quiet_run=quiet)
    report = lidar_checkpoint(checkpoint, config, LidarSettings(views=views, seed=seed, delta=delta, eps=eps))
    document = json.dumps(report.to_dict(), indent=2)
    if out is not None:
        atomic_write_text(Path(out) / "lidar.json", document + "\n")
        if not quiet:
            click.echo(f"wrote {Path(out) / 'lidar.json'}", err=True)
    skipped = report.source.get("n_unreadable_skipped", 0)
    if skipped and not quiet:
        click.echo(f"skipped {skipped} unreadable image(s) of {report.source['n_images']}", err=True)
    if as_json:
        click.echo(document)
        return
    if quiet:
        return
    rows = [(name, report.roles.get(name, ""), f"{r.lidar:.2f}", r.max_rank, r.dim, r.n_classes, r.views)
            for name, r in report.results.items()]
    click.echo(render_table(("layer", "role", "LiDAR", "max", "dim", "images", "views"), rows, left=2))
    for name, r in report.results.items():
        if r.sample_limited:
            click.echo(f"Warning: {name}: {r.n_classes} images can show at most {r.max_rank} of {r.dim} LDA "
                       "directions; use more images (--max-samples) for a LiDAR of the encoder", err=True)
