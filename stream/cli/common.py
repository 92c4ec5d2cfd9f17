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
