"""Entry point of the ``collapse-probe`` command: the top-level Click group.

Each command group lives in its own module, imported only when that command runs or its help is
shown (:class:`LazyGroup`); the command modules import torch and the library inside the command
function, so ``collapse-probe --help``, ``<command> --help`` and ``--version`` never import torch.
"""

from __future__ import annotations

import importlib
import sys

import click
from collapse_probe_cli.errors import run_cli

from collapse_probe import __version__

#: command name -> "module:attribute" under collapse_probe_cli; one entry per command or group.
COMMANDS = {
    "demo": "demo:demo",
    "spectrum": "spectrum:spectrum",
    "lidar": "lidar:lidar",
    "layers": "layers:layers",
    "compare": "compare:compare",
    "track": "track:track",
    "embeddings": "embeddings:embeddings",
    "merge": "merge:merge",
    "check": "check:check",
    "train": "train:train",
    "eval": "evaluate:eval_group",
    "theory": "theory:theory",
}


class LazyGroup(click.Group):
    """A Click group that imports a command's module the first time the command is looked up.

    ``lazy_commands`` maps command names to ``"module:attribute"`` (relative to this package);
    the commands are listed in that order.
    """

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy_commands, *(n for n in super().list_commands(ctx) if n not in self.lazy_commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module_name, attribute = self.lazy_commands[cmd_name].split(":")
            module = importlib.import_module(f"{__package__}.{module_name}")
            command = getattr(module, attribute)
            if command.name != cmd_name:
                raise RuntimeError(f"{module_name}:{attribute} is the command {command.name!r}, not {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input exits with code 2 and a one-line message (``--debug`` for tracebacks)."""
    sys.exit(run_cli(cli, argv))


if __name__ == "__main__":
    main()
