"""The ``recsys-stream`` command line: one entry point for every role and job.

Long-running roles log; finite jobs show progress on stderr and offer ``--json``
for a machine-readable result on stdout.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from stream.config import MissingBootstrapError, Settings
from stream.schemas import REASONS

log = logging.getLogger("recsys_stream")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid configuration:\n{exc}", 2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _admin(settings: Settings, role: str):
    """An admin client that has proven it can reach the cluster."""
    from confluent_kafka import KafkaException

    from stream.clients import make_admin

    try:
        admin = make_admin(settings, role)
        admin.list_topics(timeout=10)
    except MissingBootstrapError as exc:
        _fail(str(exc), 2)
    except KafkaException as exc:
        _fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc.args[0].str()}")
    return admin


def _emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys-stream")
def cli() -> None:
    """Kafka streaming continual-learning worker for recommender systems.

    Configuration comes from RECSYS_* environment variables (see `recsys-stream config`).
    Without RECSYS_BOOTSTRAP_SERVERS, start a local broker with `recsys-stream broker`.
    """


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Loopback port to listen on (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(port: int | None, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground; Ctrl-C stops it."""
    from stream.broker import BrokerError, EmbeddedBroker

    settings = _settings()
    _setup_logging(settings.log_level)

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # A shell's background job inherits SIGINT ignored; Ctrl-C must still stop us cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with EmbeddedBroker(port=port, host=host) as embedded:
            click.echo(f"embedded broker listening on {embedded.bootstrap_servers} (memory storage)")
            click.echo(f"  export RECSYS_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
            click.echo("press Ctrl-C to stop", err=True)
            sys.stdout.flush()
            try:
                while embedded.running():
                    time.sleep(0.2)
            except KeyboardInterrupt:
                click.echo("stopping embedded broker", err=True)
                return
            _fail(f"embedded broker exited unexpectedly; last log lines:\n{embedded.log_tail()}")
    except BrokerError as exc:
        _fail(str(exc))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_config(as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    settings = _settings()
    values = settings.masked()
    if as_json:
        _emit_json(values)
        return
    width = max(len(k) for k in values)
    for name, value in values.items():
        shown = "(unset)" if value is None else value
        click.echo(f"RECSYS_{name.upper():<{width}}  {shown}")


@cli.group()
def topics() -> None:
    """Create or list the system's topics."""


@topics.command("create")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def topics_create(as_json: bool) -> None:
    """Create every missing topic (idempotent)."""
    from stream.topics import TopicError, ensure_topics

    settings = _settings()
    admin = _admin(settings, "topics")
    try:
        result = ensure_topics(admin, settings)
    except TopicError as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(result)
    else:
        for name, status in result.items():
            click.echo(f"{name:<40} {status}")


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def topics_list(as_json: bool) -> None:
    """List the system's topics with partitions and cleanup policy."""
    from dataclasses import asdict

    from stream.topics import describe_topics, topic_specs

    settings = _settings()
    admin = _admin(settings, "topics")
    infos = describe_topics(admin, settings)
    missing = sorted({s.name for s in topic_specs(settings)} - {i.name for i in infos})
    if as_json:
        _emit_json({"topics": [asdict(i) for i in infos], "missing": missing})
        return
    click.echo(f"{'topic':<40} {'partitions':>10}  {'cleanup':<8} retention.ms")
    for info in infos:
        click.echo(f"{info.name:<40} {info.partitions:>10}  {info.cleanup_policy:<8} {info.retention_ms}")
    if missing:
        click.echo(f"missing (run `recsys-stream topics create`): {', '.join(missing)}", err=True)


@cli.group()
def policy() -> None:
    """List, inspect and roll back policy versions on the policies topic."""


def _header_row(header) -> dict[str, Any]:
    return {"version": header.version, "parent": header.parent, "created_at": header.created_at,
            "bytes": header.total_bytes, "chunks": header.n_chunks, "signed": header.signature is not None,
            "checksum": header.checksum, "metrics": header.metrics}


@policy.command("list")
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policy_list(name: str | None, as_json: bool) -> None:
    """Every complete version retained on the topic, oldest first."""
    from stream.policy_bus import read_versions

    settings = _settings()
    _admin(settings, "policy")
    versions = read_versions(settings, name)
    rows = [_header_row(v.header) for v in versions]
    if as_json:
        _emit_json({"name": name or settings.policy_name, "versions": rows})
        return
    if not rows:
        click.echo(f"no versions of policy {name or settings.policy_name!r} yet", err=True)
        return
    click.echo(f"{'version':>7} {'parent':>6}  {'created (UTC)':<19} {'bytes':>9} {'signed':<6} metrics")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_at"]))
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        click.echo(f"{r['version']:>7} {r['parent'] or '-':>6}  {created:<19} {r['bytes']:>9} "
                   f"{'yes' if r['signed'] else 'no':<6} {metrics}")


@policy.command("show")
@click.argument("version", type=click.IntRange(1))
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policy_show(version: int, name: str | None, as_json: bool) -> None:
    """One version's header, verified (checksum, signature when a key is set, shapes)."""
    from models.serialization import PolicyIntegrityError
    from stream.policy_bus import PolicyNotFound, find_version, signing_key

    settings = _settings()
    _admin(settings, "policy")
    try:
        found = find_version(settings, version, name)
    except PolicyNotFound as exc:
        _fail(str(exc))
    row = _header_row(found.header) | {"model_config": found.header.model_config}
    try:
        found.load(signing_key(settings))
        row["verified"], row["problem"] = True, None
    except PolicyIntegrityError as exc:
        row["verified"], row["problem"] = False, str(exc)
    if as_json:
        _emit_json(row)
    else:
        for k, v in row.items():
            click.echo(f"{k:<13} {v}")
    if not row["verified"]:
        sys.exit(1)


@policy.command("rollback")
@click.argument("version", type=click.IntRange(1))
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
def policy_rollback(version: int, name: str | None, as_json: bool) -> None:
    """Republish VERSION's weights as a new version; scorers swap to it like to any other."""
    from models.serialization import PolicyIntegrityError
    from stream.policy_bus import PolicyNotFound, PolicyRaceError, rollback

    settings = _settings()
    _admin(settings, "policy")
    try:
        header = rollback(settings, version, name)
    except (PolicyNotFound, PolicyIntegrityError, PolicyRaceError) as exc:
        _fail(f"cannot roll back: {exc}")
    if as_json:
        _emit_json(_header_row(header))
    else:
        click.echo(f"republished v{version} as v{header.version} (parent v{header.parent})")


@cli.group()
def dlq() -> None:
    """Inspect the dead-letter topic and replay what a fix made valid."""


def _dlq_filters(reason: tuple[str, ...], topic: tuple[str, ...], since) -> dict[str, Any]:
    import calendar

    return {"reasons": set(reason) or None, "topics": set(topic) or None,
            "since": calendar.timegm(since.timetuple()) if since is not None else None}


_DLQ_FILTERS = [
    click.option("--reason", multiple=True, type=click.Choice(list(REASONS)),
                 help="Only letters refused for this reason (repeatable)."),
    click.option("--topic", multiple=True, help="Only letters from this logical source topic (repeatable)."),
    click.option("--since", type=click.DateTime(), default=None,
                 help="Only letters dead-lettered at or after this UTC time (e.g. 2026-11-24T06:00:00)."),
]


def _with_dlq_filters(command):
    for option in reversed(_DLQ_FILTERS):
        command = option(command)
    return command


@dlq.command("show")
@_with_dlq_filters
@click.option("--limit", type=click.IntRange(0), default=10, show_default=True, help="Letters to print in full.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def dlq_show(reason: tuple[str, ...], topic: tuple[str, ...], since, limit: int, as_json: bool) -> None:
    """Counts by source topic and reason, then the newest letters with their error."""
    from stream.dlq_replay import read_dead_letters, select
    from stream.topics import logical_name

    settings = _settings()
    _admin(settings, "dlq")
    letters = select(read_dead_letters(settings), settings, **_dlq_filters(reason, topic, since))
    counts: dict[str, int] = {}
    for letter in letters:
        key = f"{logical_name(settings, letter.source_topic)}/{letter.reason}"
        counts[key] = counts.get(key, 0) + 1
    newest = sorted(letters, key=lambda letter: letter.ts)[-limit:] if limit else []
    rows = [{"ts": letter.ts, "source_topic": letter.source_topic, "reason": letter.reason, "error": letter.error,
             "component": letter.component, "partition": letter.partition, "offset": letter.offset,
             "line": letter.line, "original": letter.original.decode("utf-8", "replace"),
             "truncated": letter.original_truncated} for letter in newest]
    if as_json:
        _emit_json({"letters": len(letters), "by_topic_and_reason": counts, "newest": rows})
        return
    click.echo(f"{len(letters)} dead letters" + ("" if not counts else ": " + ", ".join(
        f"{k} {n}" for k, n in sorted(counts.items()))))
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
        where = f"line {r['line']}" if r["line"] else f"p{r['partition']}@{r['offset']}"
        click.echo(f"{when} {r['source_topic']} {where} {r['reason']} ({r['component']}): {r['error'][:160]}")


@dlq.command("replay")
@_with_dlq_filters
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def dlq_replay(reason: tuple[str, ...], topic: tuple[str, ...], since, dry_run: bool, as_json: bool) -> None:
    """Send dead letters that now pass their topic's contract back to that topic, bytes unchanged.

    Letters still invalid are counted by the reason they fail for now and not sent; truncated
    originals and derived topics are skipped. Replaying twice within the reward join's
    de-duplication horizon (2 h) is harmless: it drops repeated event_ids.
    """
    from stream.dlq_replay import read_dead_letters, replay, select

    settings = _settings()
    _admin(settings, "dlq")
    letters = select(read_dead_letters(settings), settings, **_dlq_filters(reason, topic, since))
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    say(f"{len(letters)} dead letters selected{' (dry run)' if dry_run else ''}")
    report = replay(settings, letters, dry_run, progress=lambda done, total: say(f"  {done}/{total} examined"))
    out = report.as_dict()
    if as_json:
        _emit_json(out)
        return
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {out['replayed']}: {out['replayed_by_topic_and_reason'] or '-'}; still invalid "
               f"{out['still_invalid'] or 'none'}; skipped {out['skipped'] or 'none'}")


@cli.command()
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

    from stream.ingest import ingest_file
    from stream.metrics import serve_metrics
    from stream.topics import ensure_topics

    settings = _settings()
    _setup_logging("WARNING" if as_json else settings.log_level)
    if not file.is_file():
        _fail(f"no such file: {file}", 2)
    admin = _admin(settings, "ingest")
    ensure_topics(admin, settings)
    port = metrics_port if metrics_port is not None else settings.metrics_port or None
    if port is not None:
        serve_metrics(port)

    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), transient=as_json,
        console=_stderr_console(),
    )
    with progress:
        task = progress.add_task(f"ingest {file.name} -> {logical}", total=file.stat().st_size)
        report = ingest_file(settings, file, logical,
                             progress=lambda done: progress.update(task, completed=done))
    summary = report.as_dict()
    if as_json:
        _emit_json(summary)
    else:
        click.echo(
            f"read {report.read}, produced {report.produced}, dead-lettered {report.dead_lettered}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(report.reasons.items()))})"
               if report.reasons else "")
            + (f", blank {report.blank}" if report.blank else "")
            + f" in {report.seconds:.2f}s"
        )
    if report.delivery_failures:
        _fail(f"{len(report.delivery_failures)} messages were not acknowledged by the broker, "
              f"first: {report.delivery_failures[0]}")


def _stop_on_signals(stop) -> None:
    """SIGTERM and SIGINT finish the current batch, then stop (a worker's graceful shutdown)."""
    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %d, stopping after the current batch", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_worker_metrics(settings: Settings, port: int | None) -> None:
    from stream.metrics import serve_metrics

    bound = serve_metrics(port if port is not None else settings.metrics_port)
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)


@cli.command()
@click.option("--click-window", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds (event time) after an impression in which a click counts.")
@click.option("--purchase-window", type=click.FloatRange(min=0.1), default=3600.0, show_default=True,
              help="Seconds after an impression in which a purchase counts.")
@click.option("--grace", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="Seconds an out-of-order event may arrive late and still be joined.")
@click.option("--engine", type=click.Choice(["batch", "faust"]), default="batch", show_default=True,
              help="batch: confluent-kafka batch consumer with changelog-backed state (survives restarts "
                   "and rebalances, ~20k events/s); faust: the faust agent (in-memory state, ~4k events/s).")
@click.option("--batch", "batch_size", type=click.IntRange(1), default=5000, show_default=True,
              help="Messages per consumed batch (batch engine).")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds without input (batch engine; for finite runs).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one).")
def process(click_window: float, purchase_window: float, grace: float, engine: str, batch_size: int,
            idle_exit: float | None, metrics_port: int | None) -> None:
    """Run the reward-join stream processor: impressions + clicks + purchases -> experiences.

    Run several with the same RECSYS_TOPIC_PREFIX to split the partitions between them.
    """
    from stream.join import JoinConfig
    from stream.topics import ensure_topics

    settings = _settings()
    _setup_logging(settings.log_level)
    admin = _admin(settings, "process")
    ensure_topics(admin, settings)
    _serve_worker_metrics(settings, metrics_port)
    join = JoinConfig(click_window=click_window, purchase_window=purchase_window, grace=grace)
    if engine == "faust":
        from stream.rewards import RewardWorker

        worker = RewardWorker(settings, join)
        log.info("reward join (faust): %s -> %s", ", ".join(worker.names), settings.topic_prefix + "experiences")
        worker.run()
        return
    from stream.join_worker import JoinWorker

    batch_worker = JoinWorker(settings, join, batch=batch_size)
    _stop_on_signals(batch_worker.stop)
    log.info("reward join (batch): %s -> %s", ", ".join(batch_worker.names), settings.topic_prefix + "experiences")
    batch_worker.run(idle_exit=idle_exit)
    log.info("reward join stopped after %d messages", batch_worker.consumed)


@cli.command()
@click.option("--publish-every", type=click.IntRange(1), default=50, show_default=True,
              help="Updates between publish attempts.")
@click.option("--publish-seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds between publish attempts when updates are fewer.")
@click.option("--batch-size", type=click.IntRange(8), default=256, show_default=True,
              help="Fresh experiences per update (replay adds as many again).")
@click.option("--gate-margin", type=click.FloatRange(min=0.0), default=0.02, show_default=True,
              help="Publish unless the DR estimate is below the live version's by more than this.")
@click.option("--retain", type=click.IntRange(1), default=20, show_default=True,
              help="Policy versions kept on the topic (older ones are tombstoned); rollback reaches these.")
@click.option("--probe-period", type=click.FloatRange(min=1.0), default=900.0, show_default=True,
              help="Seconds per forgetting probe set (held-out decisions of a period, re-scored by every version).")
@click.option("--probe-sets", type=click.IntRange(1, 24), default=4, show_default=True,
              help="Probe sets kept (recsys_learner_forgetting_ratio has one series per set).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch (default: torch's choice; 1 when sharing a small machine).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint file (default: $RECSYS_DATA_DIR/learner/<prefix><policy>.ckpt).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one).")
def learn(publish_every: int, publish_seconds: float, batch_size: int, gate_margin: float, retain: int,
          probe_period: float, probe_sets: int, device: str, threads: int | None, checkpoint: Path | None, metrics_port: int | None) -> None:
    """Run the learner: trains on fresh experiences and replay, publishes gated policy versions."""
    from models.encoders import EncoderLoadError, TextEncoder
    from models.learner import LearnerConfig
    from stream.learner import LearnerWorker, LearnerWorkerConfig
    from stream.topics import ensure_topics

    settings = _settings()
    _setup_logging(settings.log_level)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    ensure_topics(_admin(settings, "learner"), settings)
    _serve_worker_metrics(settings, metrics_port)
    try:
        encoder = TextEncoder()
    except EncoderLoadError as exc:
        _fail(str(exc))
    config = LearnerWorkerConfig(batch_size=batch_size, publish_every_updates=publish_every,
                                 publish_every_seconds=publish_seconds, gate_margin=gate_margin,
                                 retain_versions=retain, probe_period_seconds=probe_period,
                                 probe_sets=probe_sets)
    worker = LearnerWorker(settings, encoder, config,
                           LearnerConfig(device=device, ewc_strength=100.0, distill_strength=0.5),
                           checkpoint_path=checkpoint)
    _stop_on_signals(worker.stop)
    log.info("learner on %s: checkpoint %s", worker.learner.device, worker.checkpoint_path)
    worker.run()
    log.info("learner stopped at version %d after %d updates", worker.version, worker.learner.step)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the HTTP API (0.0.0.0 for all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of POST /score, GET /healthz and GET /metrics (0 picks a free one).")
@click.option("--slate-size", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Items returned when a request does not say k.")
@click.option("--temperature", type=click.FloatRange(min=1e-3), default=0.1, show_default=True,
              help="Softmax temperature of exploration.")
@click.option("--epsilon", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Share of uniform exploration mixed into every draw.")
@click.option("--no-kafka-requests", is_flag=True, help="Serve HTTP only (no score-requests consumer).")
def score(host: str, port: int, slate_size: int, temperature: float, epsilon: float,
          no_kafka_requests: bool) -> None:
    """Serve scoring with the live policy over HTTP and Kafka; hot-swaps to every new version."""
    from models.encoders import EncoderLoadError, TextEncoder
    from stream.scorer import ScorerConfig, ScorerService
    from stream.topics import ensure_topics

    settings = _settings()
    _setup_logging(settings.log_level)
    ensure_topics(_admin(settings, "scorer"), settings)
    try:
        encoder = TextEncoder()
    except EncoderLoadError as exc:
        _fail(str(exc))
    try:
        service = ScorerService(settings, encoder, ScorerConfig(slate_size, temperature, epsilon), host, port,
                                kafka_requests=not no_kafka_requests)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    done = threading.Event()
    _stop_on_signals(done.set)
    service.start()
    log.info("scorer ready: %s/score, %s/metrics", service.url, service.url)
    done.wait()
    service.stop()
    log.info("scorer stopped")


@cli.command()
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file of the replay store (default: $RECSYS_DATA_DIR/replay/<prefix>replay.db).")
@click.option("--window", type=click.IntRange(1), default=200_000, show_default=True,
              help="Most recent experiences kept as they are.")
@click.option("--reservoir", type=click.IntRange(0), default=800_000, show_default=True,
              help="Uniform sample of everything older than the window.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one).")
def replay(store_path: Path | None, window: int, reservoir: int, metrics_port: int | None) -> None:
    """Run the replay buffer service: consume experiences into the durable replay store."""
    from stream.replay import ReplayService, default_store_path
    from stream.replay_store import StoreConfig

    settings = _settings()
    _setup_logging(settings.log_level)
    try:
        settings.require_bootstrap("replay")
    except MissingBootstrapError as exc:
        _fail(str(exc), 2)
    service = ReplayService(settings, store_path, StoreConfig(window=window, reservoir=reservoir))
    _stop_on_signals(service.stop)
    _serve_worker_metrics(settings, metrics_port)
    log.info("replay service: %s -> %s", service.topic, store_path or default_store_path(settings))
    service.run()
    log.info("replay service stopped after %d messages", service.consumed)


@cli.command()
@click.option("--duration", type=click.FloatRange(min=5), default=150.0, show_default=True,
              help="Seconds of simulated traffic (the whole run adds about a minute of start and stop).")
@click.option("--requests", "n_requests", type=click.IntRange(1), default=None,
              help="Stop after this many scoring requests instead of --duration.")
@click.option("--rate", type=click.FloatRange(min=1), default=80.0, show_default=True,
              help="Scoring requests per second the simulated users make.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("demo-reward.png"), show_default=True, help="Where to write the reward-over-time PNG.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep each role's log here (default: a temporary directory).")
@click.option("--walkthrough", is_flag=True, help="Only the foundation walkthrough: ingest a small shop's events "
              "(some invalid) and show the topics and the dead-letter topic.")
@click.option("--prometheus", "with_prometheus", is_flag=True,
              help="Also start a real Prometheus server (the `prometheus` binary on PATH) scraping every role, "
              "with deploy/prometheus/alerts.yml loaded, and print its URL.")
@click.option("--prometheus-port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="Port of that Prometheus server.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def demo(duration: float, n_requests: int | None, rate: float, plot_path: Path, log_dir: Path | None,
         walkthrough: bool, with_prometheus: bool, prometheus_port: int, as_json: bool) -> None:
    """Run the whole loop on the embedded broker (or RECSYS_BOOTSTRAP_SERVERS).

    Starts the broker, creates the topics and runs the reward join, the replay buffer,
    the learner and the scorer; simulated users request slates from the scorer and
    click and buy on them. Prints live progress, then a summary, writes a PNG of reward
    over time (learned vs random vs oracle, drift marked) and stops everything it started.
    """
    from stream.broker import BrokerError

    settings = _settings()
    _setup_logging("WARNING")
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    if walkthrough:
        _walkthrough(settings, say, as_json)
        return
    from stream.closed_loop import LoopOptions, run_closed_loop
    from stream.prometheus_server import PrometheusUnavailable, find_prometheus

    if with_prometheus:
        try:
            find_prometheus()       # before anything starts: say how to get it
        except PrometheusUnavailable as exc:
            _fail(str(exc))
    options = LoopOptions(duration=duration, requests=n_requests, rate=rate, plot=plot_path, log_dir=log_dir,
                          prometheus_port=prometheus_port if with_prometheus else None)
    try:
        report = run_closed_loop(settings, options, say)
    except (BrokerError, PrometheusUnavailable) as exc:
        _fail(str(exc))
    except (RuntimeError, TimeoutError) as exc:
        _fail(f"demo failed: {exc}")
    if as_json:
        _emit_json({k: v for k, v in report.items() if k != "series"})
        return
    last = report["last_window"]
    click.echo("")
    click.echo(f"requests {report['requests']} ({report['failed_requests']} failed), events {report['events']} "
               f"({report['events_per_second']}/s), {report['seconds']}s in all")
    click.echo(f"policy versions on the topic (the last 20 are retained) {report['versions_published']}; "
               f"served {report['versions_served']}")
    click.echo(f"{'phase':<8} {'requests':>8} {'learned':>8} {'random':>8} {'oracle':>8}   (expected reward per slate)")
    for name, row in report["phases"].items():
        if row["requests"]:
            click.echo(f"{name:<8} {row['requests']:>8} {row['learned']:>8.3f} {row['random']:>8.3f} "
                       f"{row['oracle']:>8.3f}")
    click.echo(f"last {last['requests']} requests: CTR learned {last['ctr_learned']:.3f} vs random "
               f"{last['ctr_random']:.3f}")
    fresh = report["click_to_live_seconds"]
    if fresh["clicks"]:
        click.echo(f"freshness, click -> a version trained on it serving: p50 {fresh['p50']:.1f}s, "
                   f"p99 {fresh['p99']:.1f}s over {fresh['clicks']} clicks ({fresh['not_live_at_end']} not yet live "
                   "at the end)")
    forgetting = report["forgetting_by_probe_age"]
    if forgetting:
        from stream.closed_loop import PROBE_PERIOD_SECONDS

        click.echo("forgetting (share of the best value lost on held-out decisions of past "
                   f"{PROBE_PERIOD_SECONDS} s periods, by age): "
                   + ", ".join(f"{age}: {lost:.1%}" for age, lost in sorted(forgetting.items(), key=lambda kv: int(kv[0]))))
    if "prometheus" in report:
        prom = report["prometheus"]
        p99 = prom["scorer_http_p99_seconds"]
        click.echo(f"Prometheus ({prom['url']}, stopped with the demo): targets up {prom['targets_up']}; scorer HTTP "
                   f"p99 {'n/a' if p99 is None else f'{p99 * 1000:.1f} ms'}; versions {prom['policy_version']}; "
                   f"alerts firing {prom['alerts_firing'] or 'none'}")
    click.echo(f"dead letters: {report['dead_letters'] or 'none'}; plot: {report.get('plot')}")


def _walkthrough(settings: Settings, say, as_json: bool) -> None:
    from stream.broker import BrokerError
    from stream.demo import run_demo

    try:
        summary = run_demo(settings, say)
    except BrokerError as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(summary)
        return
    click.echo("")
    click.echo(f"{'topic':<14} {'read':>6} {'produced':>9} {'dead-lettered':>14} {'on topic':>9}")
    for logical, counts in summary["ingested"].items():
        click.echo(f"{logical:<14} {counts['read']:>6} {counts['produced']:>9} "
                   f"{counts['dead_lettered']:>14} {summary['messages_on_topics'][logical]:>9}")
    click.echo(f"dead letters by reason: {summary['dead_letters']}  ({summary['seconds']}s)")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _add_bench() -> None:
    # The benchmarks live in bench/ (shipped in the same wheel); only click is imported until one runs.
    from bench.cli import bench

    cli.add_command(bench)


_add_bench()


def main() -> None:
    cli(prog_name="recsys-stream")


if __name__ == "__main__":
    main()
