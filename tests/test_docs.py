"""docs/ stays true: every CLI option is documented, every command's --help has an example."""

from pathlib import Path

import click
import pytest
from collapse_probe_cli.main import cli

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    if isinstance(command, click.Group):  # list_commands/get_command: the top group loads lazily
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))
    else:
        yield " ".join(path), command


COMMANDS = list(_commands(cli))


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_is_in_docs_cli_md(name, command):
    text = (DOCS / "cli.md").read_text()
    assert f"`{name.split()[0]}" in text
    undocumented = [
        option.opts[0] for option in command.params
        if isinstance(option, click.Option) and not any(o in text for o in option.opts if o.startswith("--"))
    ]
    assert not undocumented, f"{name}: options missing from docs/cli.md: {undocumented}"


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_help_shows_a_worked_example(name, command):
    assert f"collapse-probe {name.split()[0]}" in (command.help or "") or "Examples" in (command.help or ""), name


def test_docs_link_only_to_files_that_exist():
    import re

    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
