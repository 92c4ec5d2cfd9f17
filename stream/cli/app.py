"""The ``recsys-stream`` group: every command registered here, the benchmarks loaded only when asked for."""

from __future__ import annotations

import click

from stream.cli import admin, demo, dlq, logs, policy, roles


class _Commands(click.Group):
    """Adds ``bench`` lazily: ``bench/`` is not imported unless a benchmark command is invoked or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "bench"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "bench":
            from bench.cli import bench

            return bench
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys-stream")
def cli() -> None:
    """Kafka streaming continual-learning worker for recommender systems.

    Configuration comes from RECSYS_* environment variables (see `recsys-stream config`).
    Without RECSYS_BOOTSTRAP_SERVERS, start a local broker with `recsys-stream broker`.
    """


for command in (roles.broker, roles.process, roles.learn, roles.score, roles.replay,
                admin.show_config, admin.keygen, admin.topics, admin.ingest, logs.import_logs, logs.evaluate,
                logs.experiences, policy.policy, dlq.dlq, demo.demo):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="recsys-stream")
