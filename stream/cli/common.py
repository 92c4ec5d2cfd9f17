"""What every command shares: settings, logging, exits with a clear message, JSON output.

Long-running roles log; finite jobs show progress on stderr and offer ``--json`` for a
machine-readable result on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from stream.config import Settings

log = logging.getLogger("recsys_stream")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


#: The agent variants (``models.agent.VARIANTS``) that ``learn --variant`` and ``demo --arms`` take, written out:
#: importing the agent would make ``--help`` slow (tests/unit/test_cli_reference.py keeps them the agent's).
VARIANTS = ("ours", "ours_no_meta", "ours_no_anti_forgetting", "ours_online_only", "ours_retained",
            "ours_changepoint")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid configuration:\n{exc}", 2)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def admin_or_exit(settings: Settings, role: str):
    """An admin client that has proven it can reach the cluster; exit 2 without a bootstrap, 1 unreachable."""
    from stream.ops.lifecycle import RoleStartError, reachable_admin

    try:
        return reachable_admin(settings, role)
    except RoleStartError as exc:
        fail(str(exc), exc.exit_code)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def run_role_or_exit(name: str, build: Callable[[Settings], Any], metrics_port: int | None,
                     serve_metrics: bool = True, handle_signals: bool = True) -> Any:
    """Run a long-running role through the one lifecycle (``stream.ops.lifecycle``); exit cleanly on start errors."""
    from stream.ops.lifecycle import RoleStartError, run_role

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        return run_role(name, settings, build, metrics_port=metrics_port,
                        serve_own_metrics=serve_metrics, handle_signals=handle_signals)
    except RoleStartError as exc:
        fail(str(exc), exc.exit_code)


class ConfigDefault(click.Option):
    """An option whose default is a config dataclass's, so each default is written in one place.

    ``default_from="stream.join.reward_join:JoinConfig.grace"`` names the dataclass and the
    attribute path on an instance built with no arguments. The module is imported only when
    click needs the value (the command runs, or its ``--help`` is shown): most configs live
    beside torch, and ``recsys-stream --help`` must stay instant.
    """

    def __init__(self, *args: Any, default_from: str, **kwargs: Any) -> None:
        kwargs.setdefault("show_default", True)
        super().__init__(*args, **kwargs)
        self.default_from = default_from

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        return config_default(self.default_from)


def config_default(path: str) -> Any:
    """The value at ``module:Class.attr[.attr]`` on ``Class()``, or of the module constant ``module:NAME``."""
    import importlib

    module, _, dotted = path.partition(":")
    name, *attributes = dotted.split(".")
    value = getattr(importlib.import_module(module), name)
    if isinstance(value, type):
        value = value()
    for attribute in attributes:
        value = getattr(value, attribute)
    return value


def option(*names: str, default_from: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """``click.option`` whose default (shown in the help) comes from a config dataclass (``ConfigDefault``)."""
    return click.option(*names, cls=ConfigDefault, default_from=default_from, **kwargs)
