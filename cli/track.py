"""``collapse-probe track``: collapse over training, from a folder (glob, list) of checkpoints."""

from __future__ import annotations

import json

import click
from collapse_probe_cli import options
from collapse_probe_cli.errors import EXIT_CHECK_FAILED

from collapse_probe.errors import CollapseProbeError

GATED = ("effective_rank", "rankme", "numerical_rank", "stable_rank", "participation_ratio")
_fraction = click.FloatRange(min=0.0, max=1.0)


@click.command("track")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@options.probe_options
@click.option("--out", type=click.Path(file_okay=False), default="track_out", show_default=True, metavar="DIR",
              callback=options.check_out_folder,
              help="Folder for trajectory.csv/.json/.png, spectra.png, report.html, and track/ (each checkpoint's "
                   "result, the decoded images when they exceed --cache-memory): rerun with the same DIR to probe "
                   "only new or changed checkpoints.")
@click.option("--cache-memory", "cache_mib", type=click.FloatRange(min=0), default=2048, show_default=True,
              metavar="MiB", help="Decoded images up to this size stay in memory; more go to one file of uint8 "
                                  "tensors in DIR/track/ (reused by the next run).")
@click.option("--max-drop", type=_fraction, default=None, metavar="FRACTION",
              help="Exit 1 when a --gate-metric of the latest checkpoint is more than this fraction below its "
                   "best over the checkpoints (0.2: a 20%% fall).")
@click.option("--max-step-drop", type=_fraction, default=None, metavar="FRACTION",
              help="Exit 1 when a --gate-metric fell more than this fraction since the checkpoint before the latest.")
@click.option("--gate-metric", "gate_metrics", type=click.Choice(GATED), multiple=True,
              help="Metric the gate watches, on every layer; repeat for several [default: effective_rank].")
@click.option("--watch", is_flag=True,
              help="Keep polling SOURCE for new checkpoints and probe each once it is completely written "
                   "(it loads, or its size is the same at two polls), until Ctrl-C or --watch-timeout.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=10.0, show_default=True, metavar="SECONDS",
              help="With --watch: seconds between two looks at SOURCE.")
@click.option("--watch-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --watch: stop after this many seconds (default: only Ctrl-C stops).")
@options.as_json
@options.quiet
def track(sources: tuple[str, ...], out: str, cache_mib: float, max_drop: float | None, max_step_drop: float | None,
          gate_metrics: tuple[str, ...], watch: bool, poll_interval: float, watch_timeout: float | None,
          as_json: bool, quiet: bool, **values) -> None:
    """Probe every checkpoint of a training run on one sample of --data: collapse against step.

    SOURCE is a folder of checkpoints (the trainer's runs/x/checkpoints, Lightning .ckpt files,
    Hugging Face Trainer checkpoint-N/ folders), a glob, or a list of anything `spectrum` takes.
    They are ordered by the step they record (global_step, step, epoch, ...), else by the number
    in the name; the order and where each step came from go to stderr. Every checkpoint is
    probed with the same layers, options and images as `spectrum` would (the same numbers); the
    images are decoded once for all of them. Each result is kept in DIR/track/ the moment it is
    done, keyed by the checkpoint's content and the options: a rerun probes only new or changed
    checkpoints, and an interrupted run continues where it stopped. An unreadable checkpoint is
    reported and skipped (exit 1 at the end). Writes trajectory.csv, trajectory.json,
    trajectory.png, spectra.png and a self-contained report.html to DIR.

    \b
    Examples:
      collapse-probe train --preset demo --data builtin:digits --save-every 2 --out runs/demo
      collapse-probe track runs/demo/checkpoints --data builtin:digits --out runs/demo/track
      collapse-probe track 'lightning_logs/*/checkpoints/*.ckpt' --arch resnet18 --data val/ --max-samples 2000
      collapse-probe track hf_out/ --data val/ --max-drop 0.2 --gate-metric rankme   # CI: exit 1 on a fall
      collapse-probe track runs/x/checkpoints --data val/ --watch --poll-interval 60   # during training
    """
    from collapse_probe.pipeline._track_report import trajectory_document
    from collapse_probe.pipeline.track import Gate
    from collapse_probe.pipeline.track import track as run_track

    probe_values, _ = options.split_probe_values(values)
    config = options.probe_config(probe_values, quiet_run=True)  # one line per checkpoint, no progress bars
    gate = Gate(tuple(gate_metrics) or ("effective_rank",), max_drop, max_step_drop)
    log = (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))
    if watch:
        from collapse_probe.pipeline._track_watch import watch as run_watch

        trajectory = run_watch(sources, config, out, poll_s=poll_interval, timeout_s=watch_timeout, gate=gate,
                               cache_mib=cache_mib, log=log)
    else:
        try:
            trajectory = run_track(sources, config, out=out, gate=gate, cache_mib=cache_mib, log=log)
        except KeyboardInterrupt:
            click.echo(f"Interrupted: every finished checkpoint is kept in {out}/track; rerun the same command to "
                       "continue.", err=True)
            click.get_current_context().exit(130)
    if trajectory.checkpoints and all(c.status == "failed" for c in trajectory.checkpoints):
        first = trajectory.checkpoints[0]
        raise CollapseProbeError(f"no checkpoint could be probed; {first.path}: {first.error}")
    _print(trajectory, as_json, quiet, trajectory_document)
    if not quiet:
        click.echo(f"wrote {out}/trajectory.csv, trajectory.json, trajectory.png, spectra.png, report.html", err=True)
    if trajectory.failed or (trajectory.gate is not None and trajectory.gate["failed"]):
        click.get_current_context().exit(EXIT_CHECK_FAILED)


def _print(trajectory, as_json: bool, quiet: bool, document) -> None:
    """The table (or the JSON) on stdout; timings, failures and the gate on stderr."""
    from collapse_probe.results.table import render_table
    from collapse_probe.results.trajectory import gate_lines

    if as_json:
        click.echo(json.dumps(document(trajectory)))
    elif not quiet:
        columns = [("step", "step"), ("name", "checkpoint"), ("layer", "layer"), ("n_samples", "N"),
                   ("effective_rank", "eff.rank"), ("rankme", "RankMe"), ("collapsed_dims", "collapsed"),
                   ("unobserved_dims", "unobserved"), ("stable_rank", "stable rank")]
        rows = [[_cell(row, key) for key, _ in columns] for _, row in trajectory.table.iterrows()]
        click.echo(render_table([h for _, h in columns], rows, left=3))
    if quiet:
        return
    t = trajectory.timings
    click.echo(f"probed {t['n_probed']} checkpoint(s) now: decode {t['decode_s']:.1f} s (once), forward "
               f"{t['forward_s']:.1f} s, load {t['load_s']:.1f} s", err=True)
    for entry in trajectory.failed:
        click.echo(f"Error: {entry.path}: skipped: {entry.error}", err=True)
    if trajectory.gate is not None:
        for line in gate_lines(trajectory.gate):
            click.echo(f"gate: {line}", err=True)


def _cell(row, key: str) -> str:
    value = row.get(key)
    se = row.get(f"{key}_se")
    if isinstance(value, float):
        return f"{value:.2f}" + (f" +- {se:.2f}" if isinstance(se, float) and se == se else "")
    return str(value)
