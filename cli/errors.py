"""One-line errors and exit codes for every command.

Exit codes: 0 success, 1 a check failed (``collapse-probe check``), 2 usage or input error,
3 an unexpected internal error.
"""

from __future__ import annotations

import sys
import traceback
import warnings

import click

from collapse_probe.errors import CollapseProbeError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def run_cli(group: click.Group, argv: list[str] | None) -> int:
    """Invoke ``group`` and map exceptions to one-line messages and exit codes.

    Python warnings become one ``Warning: ...`` line each on stderr (first line of the message,
    no source line; the same message once per run). ``--quiet`` silences them all except a
    :class:`~collapse_probe.models.loading.PartialLoadWarning` (``--allow-partial`` let a checkpoint
    that does not fit load: part of the model is random, which a quiet CI run must still say).
    Deprecation and FutureWarnings (torch's own, meant for developers) are not shown. ``--debug``
    shows every warning as Python shows it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings():
        if debug:
            return _run(group, args, debug)
        warnings.simplefilter("always")  # deduplicated by message below, not by source location
        warnings.showwarning = _one_line_warnings()
        return _run(group, args, debug)


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints each distinct warning once as ``Warning: <first line>``."""
    seen: set[tuple[type, str]] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            return
        if not _is_partial_load(category) and _quiet():
            return
        text = next((part.strip() for part in str(message).splitlines() if part.strip()), category.__name__)
        if (category, text) in seen:
            return
        seen.add((category, text))
        _echo_above_progress_bars(f"Warning: {text}")

    return show


def _is_partial_load(category: type) -> bool:
    # by name: importing collapse_probe.models.loading here would import torch for --help
    return any(c.__name__ == "PartialLoadWarning" for c in category.__mro__)


def _quiet() -> bool:
    """True when the running command (or a group above it) was given ``--quiet``/``-q``."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("quiet"):
            return True
        ctx = ctx.parent
    return False


def _echo_above_progress_bars(text: str) -> None:
    """One stderr line that does not land in the middle of a live tqdm bar."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        click.echo(text, err=True)
        return
    with tqdm_module.tqdm.external_write_mode(file=sys.stderr):
        click.echo(text, err=True)


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
