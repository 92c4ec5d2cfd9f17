"""docs/CLI.md is the commands' own help, and every option's default comes from one place."""

from __future__ import annotations

import click

from stream.cli.app import cli
from stream.cli.common import ConfigDefault, config_default
from stream.cli.reference import REPO_FILE, render


def test_docs_cli_md_is_the_current_help():
    committed = REPO_FILE.read_text()
    assert committed == render(), ("docs/CLI.md is stale: regenerate it with "
                                   "`python -m stream.cli.reference > docs/CLI.md`")


def _options(command: click.Command, ctx: click.Context):
    for param in command.params:
        yield param, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield from _options(sub, click.Context(sub, info_name=name, parent=ctx))


def test_every_config_default_resolves_to_a_value_its_option_accepts():
    checked = []
    for param, ctx in _options(cli, click.Context(cli, info_name="recsys-stream")):
        if isinstance(param, ConfigDefault):
            value = config_default(param.default_from)
            assert param.type_cast_value(ctx, value) == value, param.name
            checked.append(param.name)
    # The roles' tunables: the join's windows, the learner's cadence, the scorer's memory, the replay store's size.
    assert {"click_window", "grace", "publish_every", "update_size", "slate_size", "max_users", "window"} <= set(checked)


def test_config_default_reads_nested_fields_and_module_constants():
    from models.agent import AgentConfig
    from stream.join.worker import BATCH

    assert config_default("models.agent:AgentConfig.gate.alpha") == AgentConfig().gate.alpha
    assert config_default("stream.join.worker:BATCH") == BATCH


def test_learn_offers_every_agent_variant():
    """The choices are written out (importing the agent would make --help slow): they must stay the agent's."""
    from models.agent import VARIANTS

    learn = cli.get_command(click.Context(cli), "learn")
    [variant] = [p for p in learn.params if p.name == "variant"]
    assert list(variant.type.choices) == list(VARIANTS)


def test_bench_movielens_help_names_every_row():
    """Its --policies help is written out for the same reason; a row added to the benchmark must appear there."""
    from bench.movielens import POLICIES

    ctx = click.Context(cli)
    bench = cli.get_command(ctx, "bench")
    movielens = bench.get_command(click.Context(bench, parent=ctx), "movielens")
    [policies] = [p for p in movielens.params if p.name == "policies"]
    listed = {name.strip(" .[") for name in policies.help.split(":", 1)[1].split("[")[0].split(",")}
    assert listed == set(POLICIES)
