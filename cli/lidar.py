"""``collapse-probe lidar``: one checkpoint, q seeded augmented views of each image -> LiDAR per layer."""

from __future__ import annotations

import json

import click
from collapse_probe_cli import options


@click.command("lidar")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@options.data
@options.arch
@options.layer
@click.option("--views", type=click.IntRange(min=2), default=8, show_default=True,
              help="Augmented views q of each image (each image is one LDA class of q members).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the augmentations; the views of an image depend only on it and the image.")
@click.option("--delta", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Ridge added to the within-class covariance Sw (stable-pretraining's default).")
@click.option("--eps", type=click.FloatRange(min=0), default=1e-8, show_default=True,
              help="Added to every LDA eigenvalue before normalising (stable-pretraining's default).")
@options.batch_size
@options.workers
@options.device
@options.precision
@options.image_size
@options.max_samples
@options.strict
@options.trust_checkpoint
@options.allow_partial
@options.as_json
@options.quiet
def lidar(checkpoint: str, data: str | None, arch: str | None, layers: tuple[str, ...], views: int, seed: int,
          delta: float, eps: float, batch_size: int, workers: int, device: str, precision: str,
          image_size: int | None, max_samples: int | None, strict: bool, trust_checkpoint: bool,
          allow_partial: bool, as_json: bool, quiet: bool) -> None:
    """LiDAR (Thilak et al., ICLR 2024) of CHECKPOINT's embeddings on a folder of images.

    Each image is one class whose members are --views augmented views (the paper's augmentations,
    view 1 and view 2 alternating, seeded by --seed); LiDAR is the effective rank of the LDA matrix
    Sw^-1/2 Sb Sw^-1/2, in stable-pretraining's conventions (docs/metrics.md). It can reach at most
    min(dim, images - 1). Prints one row per layer (default: the representation and, with a
    projector, the projector output); --json prints every eigenvalue and the conventions.

    \b
    Examples:
      collapse-probe lidar run/checkpoint.pt --data builtin:digits --views 8
      collapse-probe lidar resnet50.pth --arch resnet50 --data val/ --views 16 --max-samples 2000 --json
    """
    from collapse_probe.errors import CollapseProbeError
    from collapse_probe.probe.lidar import LidarConfig, lidar_checkpoint

    if not data:
        raise CollapseProbeError("--data DIR (or builtin:NAME) is needed to compute LiDAR")
    config = LidarConfig(
        data=data, views=views, seed=seed, image_size=image_size, batch_size=batch_size, workers=workers,
        max_samples=max_samples, strict=strict, arch=arch, layers=tuple(layers), device=device,
        precision=None if precision == "fp32" else precision, delta=delta, eps=eps,
        trust_checkpoint=trust_checkpoint, allow_partial=allow_partial, progress=not quiet,
    )
    report = lidar_checkpoint(checkpoint, config)
    skipped = report.source.get("n_unreadable_skipped", 0)
    if skipped and not quiet:
        click.echo(f"skipped {skipped} unreadable image(s) of {report.source['n_images']}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if quiet:
        return
    rows = [("layer", "role", "LiDAR", "max", "dim", "images", "views")]
    rows += [(name, report.roles.get(name, ""), f"{r.lidar:.2f}", str(r.max_rank), str(r.dim), str(r.n_classes),
              str(r.views)) for name, r in report.results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for name, r in report.results.items():
        if r.sample_limited:
            click.echo(f"Warning: {name}: {r.n_classes} images can show at most {r.max_rank} of {r.dim} LDA "
                       "directions; use more images (--max-samples) for a LiDAR of the encoder", err=True)
