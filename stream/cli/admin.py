"""Set-up and data-entry commands: config, topics, ingest."""

from __future__ import annotations

from pathlib import Path

import click

from stream.cli.common import admin_or_exit, emit_json, fail, load_settings, setup_logging, stderr_console


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_config(as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    settings = load_settings()
    values = settings.masked()
    if as_json:
        emit_json(values)
        return
    width = max(len(k) for k in values)
    for name, value in values.items():
        shown = "(unset)" if value is None else value
        click.echo(f"RECSYS_{name.upper():<{width}}  {shown}")


@click.command()
def keygen() -> None:
    """Print a new policy-signing key (64 hex characters) for RECSYS_HMAC_KEY."""
    from stream.policy.trust import new_key

    click.echo(new_key())


@click.group()
def topics() -> None:
    """Create or list the system's topics."""


@topics.command("create")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def topics_create(as_json: bool) -> None:
    """Create every missing topic (idempotent)."""
    from stream.kafka.topics import TopicError, ensure_topics

    settings = load_settings()
    admin = admin_or_exit(settings, "topics")
    try:
        result = ensure_topics(admin, settings)
    except TopicError as exc:
        fail(str(exc))
    if as_json:
        emit_json(result)
    else:
        for name, status in result.items():
            click.echo(f"{name:<40} {status}")


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def topics_list(as_json: bool) -> None:
    """List the system's topics with partitions and cleanup policy."""
    from dataclasses import asdict

    from stream.kafka.topics import describe_topics, topic_specs

    settings = load_settings()
    admin = admin_or_exit(settings, "topics")
    infos = describe_topics(admin, settings)
    missing = sorted({s.name for s in topic_specs(settings)} - {i.name for i in infos})
    if as_json:
        emit_json({"topics": [asdict(i) for i in infos], "missing": missing})
        return
    click.echo(f"{'topic':<40} {'partitions':>10}  {'cleanup':<8} retention.ms")
    for info in infos:
        click.echo(f"{info.name:<40} {info.partitions:>10}  {info.cleanup_policy:<8} {info.retention_ms}")
    if missing:
        click.echo(f"missing (run `recsys-stream topics create`): {', '.join(missing)}", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--topic", "logical", required=True,
              type=click.Choice(["clicks", "purchases", "impressions", "items"]),
              help="Topic the events belong to.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON on stdout.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port while ingesting.")
def ingest(file: Path, logical: str, as_json: bool, metrics_port: int | None) -> None:
    """Validate a JSONL FILE and produce its events; invalid lines go to the dead-letter topic.

    Each line is one JSON event. Ends with counts: read, produced, dead-lettered.
    Exits 1 if the broker did not acknowledge every message.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from stream.ingest.files import ingest_file
    from stream.kafka.topics import ensure_topics
    from stream.ops.metrics import serve_metrics

    settings = load_settings()
    setup_logging("WARNING" if as_json else settings.log_level)
    if not file.is_file():
        fail(f"no such file: {file}", 2)
    admin = admin_or_exit(settings, "ingest")
    ensure_topics(admin, settings)
    port = metrics_port if metrics_port is not None else settings.metrics_port or None
    if port is not None:
        serve_metrics(port)

    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), transient=as_json,
        console=stderr_console(),
    )
    with progress:
        task = progress.add_task(f"ingest {file.name} -> {logical}", total=file.stat().st_size)
        report = ingest_file(settings, file, logical,
                             progress=lambda done: progress.update(task, completed=done))
    summary = report.as_dict()
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"read {report.read}, produced {report.produced}, dead-lettered {report.dead_lettered}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(report.reasons.items()))})"
               if report.reasons else "")
            + (f", blank {report.blank}" if report.blank else "")
            + f" in {report.seconds:.2f}s"
        )
    if report.delivery_failures:
        fail(f"{len(report.delivery_failures)} messages were not acknowledged by the broker, "
              f"first: {report.delivery_failures[0]}")
