"""Entry point of the ``collapse-probe`` command: the top-level Click group.

Each command group lives in its own module and is registered here; the commands only parse
options into a config and call one library function.
"""

from __future__ import annotations

import sys

import click
from collapse_probe_cli.errors import run_cli

from collapse_probe import __version__

COMMAND_MODULES = (
    # (module under collapse_probe_cli, attribute): one entry per command or group
    ("demo", "demo"),
    ("spectrum", "spectrum"),
    ("lidar", "lidar"),
    ("layers", "layers"),
    ("compare", "compare"),
    ("embeddings", "embeddings"),
    ("check", "check"),
    ("train", "train"),
    ("evaluate", "eval_group"),
    ("theory", "theory"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="collapse-probe")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Has my encoder collapsed? Covariance spectra, effective rank and collapse checks.

    \b
    Examples:
      collapse-probe demo --out demo_out            # the paper's story in 3 minutes, no data
      collapse-probe spectrum ckpt.pt --data imagenet/val --out probe_out
      collapse-probe check ckpt.pt --data val/ --min-effective-rank 50
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register_commands() -> None:
    import importlib

    for module_name, attribute in COMMAND_MODULES:
        module = importlib.import_module(f"collapse_probe_cli.{module_name}")
        cli.add_command(getattr(module, attribute))


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input exits with code 2 and a one-line message (``--debug`` for tracebacks)."""
    sys.exit(run_cli(cli, argv))


if __name__ == "__main__":
    main()
