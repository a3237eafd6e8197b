"""One-line errors and exit codes for every command.

Exit codes: 0 success, 1 a check failed (``collapse-probe check``), 2 usage or input error,
3 an unexpected internal error.
"""

from __future__ import annotations

import sys
import traceback
import warnings

import click

from collapse_probe.checkpoints import PartialLoadWarning
from collapse_probe.errors import CollapseProbeError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def run_cli(group: click.Group, argv: list[str] | None) -> int:
    """Invoke ``group`` and map exceptions to one-line messages and exit codes.

    A :class:`~collapse_probe.checkpoints.PartialLoadWarning` (``--allow-partial`` let a checkpoint
    that does not fit load) is shown as one ``Warning:`` line on stderr, even with ``--quiet``;
    other Python warnings are shown as Python shows them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings():
        shown_before = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, PartialLoadWarning) and not debug:
                click.echo(f"Warning: {message}", err=True)
            else:
                shown_before(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", PartialLoadWarning)  # one line per checkpoint, every run
        return _run(group, args, debug)


def _run(group: click.Group, args: list[str], debug: bool) -> int:
    try:
        # standalone_mode=False: click returns ctx.exit(code)'s code instead of raising Exit
        code = group.main(args=args, prog_name="collapse-probe", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_OK
    except click.exceptions.Exit as exit_:
        return int(exit_.exit_code)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_USAGE
    except (CollapseProbeError, FileNotFoundError, ValueError) as error:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {error}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence for users
        if debug:
            traceback.print_exc()
        else:
            click.echo(
                f"Internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
                err=True,
            )
        return EXIT_INTERNAL
