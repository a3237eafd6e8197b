"""``collapse-probe layers``: the module names one can probe, with their output shapes."""

from __future__ import annotations

import click
from collapse_probe_cli import options


@click.command("layers")
@click.argument("checkpoint", type=click.Path())
@options.arch
@options.image_size
@options.device
@options.trust_checkpoint
@options.allow_partial
def layers(checkpoint: str, arch: str | None, image_size: int | None, device: str, trust_checkpoint: bool,
           allow_partial: bool) -> None:
    """List CHECKPOINT's probeable modules (names for --layer) with output shapes.

    Shapes come from one forward pass of two random images of --image-size. Layers probed by
    default are marked with their role.

    \b
    Examples:
      collapse-probe layers run/checkpoint.pt
      collapse-probe layers resnet50.pth --arch resnet50
    """
    from collapse_probe.models.loading import load_encoder_with_report
    from collapse_probe.pipeline.checkpoints import layer_table

    loaded = load_encoder_with_report(checkpoint, arch, trust_checkpoint=trust_checkpoint, allow_partial=allow_partial)
    rows = layer_table(loaded.model, image_size=image_size or loaded.image_size or 224, device=device)
    width = max(len(name) for name, _, _ in rows)
    type_width = max(len(kind) for _, kind, _ in rows)
    for name, kind, shape in rows:
        role = loaded.default_layers.get(name, "")
        if name == "<output>" and not loaded.default_layers:
            role = "default"
        click.echo(f"{name.ljust(width)}  {kind.ljust(type_width)}  {shape}" + (f"  [{role}]" if role else ""))
