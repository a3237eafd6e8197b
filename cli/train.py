"""``collapse-probe train``: SimCLR / DirectCLR with the paper's recipe; one option per setting."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import click

from collapse_probe.ssl.config import PRESETS, TrainConfig


def _config_options(command: Any) -> Any:
    """Add one ``--option`` per TrainConfig field (help text from the field's metadata)."""
    for fld in reversed(dataclasses.fields(TrainConfig)):
        flag = "--" + fld.name.replace("_", "-")
        help_text = fld.metadata.get("help", "")
        kind = str(fld.type)
        if fld.name == "resume":
            continue  # its own flag below
        if kind == "bool":
            decl = f"{flag}/--no-{flag[2:]}"
            option = click.option(decl, fld.name, default=None, help=f"{help_text} [preset: {fld.default}]")
        else:
            if "choices" in fld.metadata:
                type_: Any = click.Choice(fld.metadata["choices"])
            elif kind.startswith("int"):
                type_ = int
            elif kind.startswith("float"):
                type_ = float
            else:
                type_ = str
            shown = "runs/PRESET-METHOD, e.g. runs/demo-directclr" if fld.name == "out" else fld.default
            option = click.option(flag, fld.name, type=type_, default=None, help=f"{help_text} [default: {shown}]")
        command = option(command)
    return command


@click.command("train", context_settings={"max_content_width": 110})
@click.option("--preset", default=None, help=f"Base settings: {', '.join(PRESETS)} (default imagenet; the options below override it).")
@click.option("--resume", is_flag=True, help="Continue OUT/checkpoint.pt, or the latest OUT/checkpoints/epoch_NNNN.pt "
                                             "(its saved settings, then the options given here).")
@click.option("--overwrite", is_flag=True, help="Start a fresh run in a non-empty OUT, replacing the earlier run's files.")
@_config_options
def train(preset: str | None, resume: bool, overwrite: bool, **options: Any) -> None:
    """Train SimCLR (any of the paper's projectors) or DirectCLR; log collapse as it trains.

    Writes OUT/checkpoint.pt (every epoch, atomically; with --save-every N also
    OUT/checkpoints/epoch_NNNN.pt every N epochs, for `collapse-probe track`), OUT/metrics.jsonl (one JSON row per
    epoch: loss, lr, imgs/s, online-probe accuracy, effective rank, RankMe, collapsed dims and
    the full spectra of the representation and the embedding) and OUT/spectra.png. The final
    summary goes to stdout as JSON; progress to stderr. OUT defaults to runs/PRESET-METHOD
    (runs/imagenet-simclr, runs/demo-directclr, ...). A non-empty OUT is refused (exit 2, nothing
    touched) unless --resume continues the run there or --overwrite replaces it.

    \b
    Examples:
      collapse-probe train --preset demo --method directclr --d0 32 --out runs/dclr
      collapse-probe train --preset demo --projector none --epochs 10 --out runs/none
      collapse-probe train --out runs/dclr --resume          # continue a killed run
      collapse-probe train --preset demo --save-every 2 --out runs/demo   # keep epochs 2, 4, ... for `track`
      collapse-probe train --preset demo --method directclr  # into runs/demo-directclr
      collapse-probe train --preset demo --out runs/none --projector none --overwrite   # redo a run
      collapse-probe train --preset fashion --method directclr --out runs/fm-dclr   # Fashion-MNIST
      torchrun --nproc-per-node 8 -m collapse_probe_cli.main train --preset imagenet \\
          --data /data/imagenet --method directclr --out runs/in1k-dclr
    """
    from collapse_probe.ssl.checkpoint import check_run_folder, latest_checkpoint, load_checkpoint
    from collapse_probe.ssl.config import default_out, preset_config
    from collapse_probe.ssl.loop import train as run_training

    given = {k: v for k, v in options.items() if v is not None}
    base = PRESETS.get(preset or "imagenet", {})
    out = given.pop("out", None) or default_out(preset or "imagenet", given.get("method", base.get("method", TrainConfig.method)))
    ckpt_path = latest_checkpoint(out) if resume and os.path.isdir(out) else None
    if ckpt_path is not None and preset is None:
        saved = TrainConfig.from_dict(load_checkpoint(ckpt_path)["config"])
        config = dataclasses.replace(saved, **given, out=out, resume=True)
    else:
        config = preset_config(preset or "imagenet", **given, out=out, resume=resume)
    from collapse_probe_cli.options import ensure_writable_folder

    check_run_folder(config.out, resume=resume, overwrite=overwrite)  # an earlier run is never replaced unasked
    ensure_writable_folder(config.out)  # before the data is read or a step is taken
    result = run_training(config)
    if result.metrics:
        summary = {k: v for k, v in result.metrics[-1].items() if k != "spectra" and not isinstance(v, dict)}
        summary["checkpoint"] = str(result.checkpoint_path)
        click.echo(json.dumps(summary))
