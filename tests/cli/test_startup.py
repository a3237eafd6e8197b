"""`--help` and `--version` start fast: no command imports torch (or pandas, matplotlib, ...) to print help.

Each check runs in a fresh interpreter (a subprocess), since this test process has torch loaded.
"""

from __future__ import annotations

import subprocess
import sys

import click
from collapse_probe_cli.main import cli

HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "scipy", "sklearn", "numpy")

#: Runs `collapse-probe ARGS` in-process for every ARGS on the command line (as JSON), then
#: prints the heavy modules that got imported.
SCRIPT = """
import json, sys
from collapse_probe_cli.main import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, None), (argv, exit_.code)
print("LOADED", json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _all_command_paths(command: click.Command = cli, path: tuple[str, ...] = ()):
    yield path
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _all_command_paths(command.get_command(ctx, name), (*path, name))


def _loaded_after(invocations: list[list[str]], cwd) -> list[str]:
    import json

    done = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY), json.dumps(invocations)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED "))
    return json.loads(line.removeprefix("LOADED "))


def test_top_level_help_and_version_import_no_torch(tmp_path):
    assert _loaded_after([["--help"], ["--version"]], tmp_path) == []


def test_every_command_help_imports_no_torch(tmp_path):
    paths = [list(p) for p in _all_command_paths() if p]
    assert {"spectrum", "check", "train", "theory"} <= {p[0] for p in paths}
    assert ["theory", "strong-aug"] in paths  # sub-commands of groups too
    assert _loaded_after([[*p, "--help"] for p in paths], tmp_path) == []


def test_the_console_script_help_imports_no_torch(tmp_path):
    """The same through `python -X importtime`, as docs/benchmarks.md measures it."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "from collapse_probe_cli.main import main; main(['spectrum', '--help'])"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "collapse-probe spectrum" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    # the command module itself comes through importlib.import_module, which -X importtime does not
    # log; the modules it imports with a plain import statement are logged
    assert "collapse_probe_cli.options" in imported
    assert "torch" not in imported


def test_lazy_group_lists_every_command_in_order():
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert names[:2] == ["demo", "spectrum"] and {"layers", "check", "eval", "theory"} <= set(names)
    assert all(cli.get_command(ctx, name).name == name for name in names)
    assert cli.get_command(ctx, "no-such-command") is None


def test_demo_variants_offered_by_the_cli_are_the_library_ones():
    from collapse_probe.demo import VARIANTS

    option = next(p for p in cli.get_command(click.Context(cli), "demo").params if p.name == "variants")
    assert list(option.type.choices) == list(VARIANTS)
