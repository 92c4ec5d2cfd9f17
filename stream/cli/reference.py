"""``docs/CLI.md``: every command's ``--help``, rendered from the click definitions themselves.

The reference is generated, never written by hand, so it cannot drift from the code; a test
compares the committed file with a fresh rendering. Regenerate it with
``python -m stream.cli.reference > docs/CLI.md``.
"""

from __future__ import annotations

from pathlib import Path

import click

#: Where the reference lives in a checkout.
REPO_FILE = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
#: Help is rendered at a fixed width, so the file does not depend on the terminal that made it.
WIDTH = 100


def _walk(command: click.Command, path: list[str], parent: click.Context | None):
    settings = command.context_settings if parent is None else {}      # the root's (-h for help) carry down
    ctx = click.Context(command, info_name=path[-1], parent=parent, terminal_width=WIDTH, max_content_width=WIDTH,
                        **settings)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render(root: click.Command | None = None) -> str:
    """The whole reference as Markdown: a table of commands, then each command's help."""
    if root is None:
        from stream.cli.app import cli

        root = cli
    entries = list(_walk(root, ["recsys-stream"], None))
    lines = ["# Command reference", "",
             "Generated from the commands' own `--help` by `python -m stream.cli.reference > docs/CLI.md`;",
             "`tests/unit/test_cli_reference.py` fails when this file is stale. Settings that every command",
             "reads (`RECSYS_*`) are in the README's configuration table.", ""]
    lines += ["| command | what it does |", "|---|---|"]
    for path, command, _ctx in entries[1:]:
        name = " ".join(path)
        lines.append(f"| [`{name}`](#{'-'.join(path)}) | {command.get_short_help_str(limit=90)} |")
    for path, command, ctx in entries[1:]:
        lines += ["", f"## {' '.join(path)}", "", "```text", command.get_help(ctx).rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    click.echo(render(), nl=False)
