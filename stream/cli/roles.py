"""Long-running roles: the broker, the reward join, the replay buffer, the learner and the scorer.

Every role but the broker starts through ``run_role_or_exit`` (``stream.ops.lifecycle``):
the cluster is checked, topics ensured and ``/metrics`` served before the role is built,
and SIGTERM/SIGINT ask it to stop after its current step.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stream.cli.common import VARIANTS, fail, load_settings, log, option, run_role_or_exit, setup_logging

if TYPE_CHECKING:
    from models.exploration import Kind as ExplorationKind
    from stream.kafka.broker import EmbeddedBroker
    from stream.ops.broker_watch import BrokerWatch

#: The allocator options of the two roles that hold large tensors (``stream/ops/memory.py``).
TRIM_SECONDS = option(
    "--trim-seconds", type=click.FloatRange(min=0), default_from="stream.ops.memory:TRIM_SECONDS",
    help="Collect young cyclic garbage and give memory glibc holds freed back to the system this often "
    "(malloc_trim; 0: never).")


def mmap_threshold_option(default: int, note: str = ""):
    return click.option(
        "--mmap-threshold", type=click.IntRange(0, 32 * 2**20), default=default, show_default=True,
        help="Bytes from which a block gets its own mapping, returned when freed (glibc's M_MMAP_THRESHOLD; "
        "0: glibc's default, which rises after large blocks are freed and keeps the next ones in its heaps)."
        + note)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Loopback port to listen on (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics: the broker process's resident memory and CPU (default RECSYS_METRICS_PORT; "
              "0 picks a free one).")
@click.option("--warn-cores", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="Warn when the broker uses this much CPU over a minute (the loop slows as it nears a core).")
@click.option("--warn-mb", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Warn when the broker holds this much resident memory (it keeps every record it is sent).")
@click.option("--census-seconds", type=click.FloatRange(min=0.5), default=60.0, show_default=True,
              help="Seconds between two counts of the record batches each topic holds (recsys_broker_held_batches; "
              "each count reads only what was written since the last).")
def broker(port: int | None, host: str, metrics_port: int | None, warn_cores: float, warn_mb: int,
           census_seconds: float) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground; Ctrl-C stops it.

    It keeps every record in memory and its CPU grows with the batches a topic holds: it
    exports its memory, its CPU and the batches each topic holds, and warns, with the figures,
    before the loop slows (see the README's limits).
    """
    from stream.kafka.broker import EMBEDDED_PARTITIONS, BrokerError, EmbeddedBroker
    from stream.ops.broker_watch import BrokerWatch, WatchLevels
    from stream.ops.metrics import serve_metrics
    from stream.policy.trust import new_key

    settings = load_settings()
    setup_logging(settings.log_level)

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # A shell's background job inherits SIGINT ignored; Ctrl-C must still stop us cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    key_line = None if settings.hmac_key is not None else \
        f"  export RECSYS_HMAC_KEY={new_key()}   # signs policy versions; give every role the same"
    try:
        with EmbeddedBroker(port=port, host=host) as embedded:
            try:   # Ctrl-C at any moment from here stops the broker cleanly
                watch = BrokerWatch(embedded.pid, WatchLevels(cpu_cores=warn_cores, resident_bytes=warn_mb * 2**20))
                wanted = metrics_port if metrics_port is not None else settings.metrics_port
                try:
                    bound = serve_metrics(wanted, host)
                except OSError as exc:
                    fail(f"cannot serve /metrics on {host}:{wanted}: {exc.strerror or exc} (pick another "
                         "--metrics-port, or 0 for a free one)")
                click.echo(f"embedded broker listening on {embedded.bootstrap_servers} (memory storage)")
                click.echo(f"  export RECSYS_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
                if "partitions" not in settings.model_fields_set:
                    click.echo(f"  export RECSYS_PARTITIONS={EMBEDDED_PARTITIONS}   # this broker's cost follows the "
                               "batches it holds, and each partition is a batch per flush")
                if key_line is not None:
                    click.echo(key_line)
                click.echo(f"its memory, CPU and batches: http://{host}:{bound}/metrics; press Ctrl-C to stop", err=True)
                sys.stdout.flush()
                _watch_until_exit(embedded, watch, census_seconds)
            except KeyboardInterrupt:
                click.echo("stopping embedded broker", err=True)
                return
            fail(f"embedded broker exited unexpectedly; last log lines:\n{embedded.log_tail()}")
    except KeyboardInterrupt:        # while the broker was still starting: it is stopped by now
        click.echo("stopped embedded broker", err=True)
        return
    except BrokerError as exc:
        fail(str(exc))


def _watch_until_exit(embedded: EmbeddedBroker, watch: BrokerWatch, census_seconds: float) -> None:
    """Samples the broker every 5 s and counts its batches every ``census_seconds`` until it exits."""
    from confluent_kafka import KafkaException

    from stream.kafka.batch_census import BatchCensus, CensusError
    from stream.ops.broker_watch import BROKER_CENSUS_ERRORS

    with BatchCensus(embedded.host, embedded.port or 0, budget_s=min(20.0, census_seconds / 2)) as census:
        next_sample = next_census = time.monotonic()
        while embedded.running():
            if time.monotonic() >= next_census:
                try:
                    held = census.update()
                    watch.observe_census(held, census.unread)
                except (OSError, CensusError, KafkaException) as exc:
                    BROKER_CENSUS_ERRORS.inc()
                    log.warning("counting the batches the broker holds failed (%s); trying again in %.0f s",
                                exc, census_seconds)
                next_census = time.monotonic() + census_seconds
            if time.monotonic() >= next_sample:
                for warning in watch.sample():
                    log.warning("%s", warning)
                next_sample += 5.0
            time.sleep(0.2)


@click.command()
@option("--click-window", type=click.FloatRange(min=0.1), default_from="stream.join.reward_join:JoinConfig.click_window",
        help="Seconds (event time) after an impression in which a click counts.")
@option("--purchase-window", type=click.FloatRange(min=0.1), default_from="stream.join.reward_join:JoinConfig.purchase_window",
        help="Seconds after an impression in which a purchase counts.")
@option("--grace", type=click.FloatRange(min=0.0), default_from="stream.join.reward_join:JoinConfig.grace",
        help="Seconds an out-of-order event may arrive late and still be joined.")
@click.option("--dedupe-horizon", type=click.FloatRange(min=0.0), default=None,
              help="Event-time seconds event ids are remembered to drop repeats, after their request is "
              "forgotten [default: purchase window + grace + 60]. Memory and join-state grow with traffic over "
              "this horizon, then level off.")
@option("--max-future", type=click.FloatRange(min=0.0), default_from="stream.join.reward_join:JoinConfig.max_future",
        help="Seconds an event may be dated ahead of this worker's clock; a later one is dead-lettered "
             "as `future` (it would move event time ahead and close every window early).")
@click.option("--engine", type=click.Choice(["batch", "faust"]), default="batch", show_default=True,
              help="batch: confluent-kafka batch consumer with changelog-backed state (survives SIGKILL, "
                   "restarts and rebalances without losing or double-paying a reward; measured in BENCHMARKS.md). "
                   "faust: the faust agent with in-memory state: a restart or a rebalance LOSES the open click and "
                   "purchase windows of its partitions (their no_click and purchase experiences are never emitted), "
                   "and its consumer is not guarded against the embedded broker stepping over a record that "
                   "several producers wrote at once (README, \"Known quirks of the embedded broker\").")
@option("--batch", "batch_size", type=click.IntRange(1), default_from="stream.join.worker:BATCH",
        help="Messages per consumed batch (batch engine).")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds without input (batch engine; for finite runs).")
@click.option("--until-caught-up", is_flag=True,
              help="Backfill: read every input to its end, then close every click and purchase window by event "
              "time (as if time had run on past the last deadline), emit everything, commit and exit 0. Run it "
              "alone in its group. Events older than the backfill's last deadline that arrive later are late.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one).")
def process(click_window: float, purchase_window: float, grace: float, dedupe_horizon: float | None,
            max_future: float, engine: str,
            batch_size: int, idle_exit: float | None, until_caught_up: bool, metrics_port: int | None) -> None:
    """Run the reward-join stream processor: impressions + clicks + purchases -> experiences.

    Run several with the same RECSYS_TOPIC_PREFIX to split the partitions between them.
    """
    from stream.join.reward_join import JoinConfig

    try:
        join = JoinConfig(click_window=click_window, purchase_window=purchase_window, grace=grace,
                          dedupe_horizon=dedupe_horizon, max_future=max_future)
    except ValueError as exc:
        fail(str(exc), 2)
    if engine == "faust" and (until_caught_up or idle_exit is not None):
        fail("--until-caught-up and --idle-exit need the batch engine (--engine batch)", 2)
    if engine == "faust":
        from stream.join.faust_engine import RewardWorker

        log.warning("faust engine: join state is in memory; a restart or rebalance loses open windows")
        run_role_or_exit("process", lambda settings: RewardWorker(settings, join), metrics_port,
                         handle_signals=False)   # faust installs its own handlers
        return
    from stream.join.worker import JoinWorker

    worker = run_role_or_exit("process", lambda settings: JoinWorker(
        settings, join, batch=batch_size, idle_exit=idle_exit, until_caught_up=until_caught_up), metrics_port)
    log.info("reward join %s after %d messages", "finished the backfill" if worker.finished else "stopped",
             worker.consumed)


@click.command()
@option("--publish-every", type=click.IntRange(1), default_from="models.agent:AgentConfig.publish_every_updates",
        help="Updates between publish attempts.")
@option("--publish-seconds", type=click.FloatRange(min=0.5), default_from="stream.learner.worker:LearnerWorkerConfig.publish_every_seconds",
        help="Seconds between publish attempts when updates are fewer (not in a backfill, which publishes by "
        "update count alone).")
@option("--update-size", type=click.IntRange(1), default_from="models.agent:AgentConfig.update_size",
        help="Fresh experiences per update (replay adds as many again; a backlog is taken in at most 8 updates).")
@option("--gate-alpha", type=click.FloatRange(1e-4, 0.5), default_from="models.agent:AgentConfig.gate.alpha",
        help="Refuse a candidate only when its DR estimate is below the live version's at this level "
        "(the paired difference's whole confidence interval below zero).")
@option("--exploration", type=click.Choice(["squarecb", "thompson", "softmax"]), default_from="models.agent:AgentConfig.exploration.kind",
        help="How versions are served (each version carries it, so scorers follow).")
@option("--full-every", type=click.IntRange(1), default_from="stream.learner.worker:LearnerWorkerConfig.full_every",
        help="A full snapshot every N versions (the others are deltas: the embedding rows that moved since "
        "the parent, and the dense layers); 1 publishes every version in full.")
@option("--full-seconds", type=click.FloatRange(min=1.0), default_from="stream.learner.worker:LearnerWorkerConfig.full_every_seconds",
        help="A full snapshot at least this often (late scorers catch up from the last one).")
@option("--retain", type=click.IntRange(1), default_from="stream.learner.worker:LearnerWorkerConfig.retain_versions",
        help="Policy versions kept on the topic (older ones are tombstoned); rollback reaches these.")
@option("--probe-period", type=click.FloatRange(min=1.0), default_from="stream.learner.worker:LearnerWorkerConfig.probe_period_seconds",
        help="Seconds per forgetting probe set (held-out decisions of a period, re-scored by every version).")
@option("--probe-sets", type=click.IntRange(1, 24), default_from="stream.learner.worker:LearnerWorkerConfig.probe_sets",
        help="Probe sets kept (recsys_learner_forgetting_ratio has one series per set).")
@option("--device", default_from="models.agent:AgentConfig.learner.device", help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch (default: torch's choice; 1 when sharing a small machine).")
@TRIM_SECONDS
@mmap_threshold_option(4 * 2**20, " At 4 MiB snapshots and checkpoints are mapped; below it, every update "
                       "maps its table gradients too.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint file (default: $RECSYS_DATA_DIR/learner/<prefix><policy>.ckpt).")
@option("--checkpoint-seconds", type=click.FloatRange(min=0.0),
        default_from="stream.learner.worker:LearnerWorkerConfig.checkpoint_every_seconds",
        help="Checkpoint after a publish at most this often (0: after every publish), and on stop. A kill "
        "-9 re-trains on what came since (read again from the topic; nothing is lost).")
@click.option("--until-caught-up", is_flag=True,
              help="Backfill: train on every experience on the topic in whole turns, publish (gated) every "
              "--publish-every updates and at the end, exit 0: the versions a benchmark makes from the same records. "
              "Meta tasks read users' histories from the replay store: let `replay` store the backlog first.")
@click.option("--variant", type=click.Choice(VARIANTS), default="ours", show_default=True,
              help="What the learner keeps of the agent (the benchmarks' rows): ours_online_only trains on fresh "
              "experiences alone (no replay, EWC or distillation), ours_no_meta serves without the meta-learned "
              "prior, ours_changepoint serves each user from where their current tastes began, ... A checkpoint "
              "remembers the model, not the variant.")
@click.option("--name", default=None, callback=lambda ctx, param, value: _policy_name(value),
              help="Policy name to train and publish (default RECSYS_POLICY_NAME). In an online experiment "
              "(`score --arms`) the learner of an arm trains only on that arm's experiences, with its own "
              "checkpoint, consumer group and chain of versions.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one; each learner on a "
              "machine needs its own).")
def learn(publish_every: int, publish_seconds: float, update_size: int, gate_alpha: float, exploration: ExplorationKind,
          full_every: int, full_seconds: float, retain: int, probe_period: float, probe_sets: int, device: str, threads: int | None,
          mmap_threshold: int, checkpoint: Path | None, checkpoint_seconds: float, trim_seconds: float,
          until_caught_up: bool, variant: str, name: str | None, metrics_port: int | None) -> None:
    """Run the learner: trains on fresh experiences and replay, publishes gated policy versions."""
    from dataclasses import replace

    from stream.ops.memory import fix_mmap_threshold, limit_malloc_arenas

    limit_malloc_arenas()       # before torch and the Kafka clients start their threads
    if mmap_threshold:
        fix_mmap_threshold(mmap_threshold)

    from models.agent import VARIANTS, AgentConfig
    from stream.learner.worker import LearnerWorker, LearnerWorkerConfig

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = LearnerWorkerConfig(publish_every_seconds=publish_seconds, retain_versions=retain,
                                 probe_period_seconds=probe_period, probe_sets=probe_sets,
                                 until_caught_up=until_caught_up, full_every=full_every,
                                 full_every_seconds=full_seconds, trim_seconds=trim_seconds,
                                 checkpoint_every_seconds=checkpoint_seconds)
    defaults = AgentConfig()
    agent = replace(defaults, learner=replace(defaults.learner, device=device), update_size=update_size,
                    publish_every_updates=publish_every, gate=replace(defaults.gate, alpha=gate_alpha),
                    exploration=replace(defaults.exploration, kind=exploration,
                                        epsilon=0.02 if exploration == "thompson" else defaults.exploration.epsilon))

    def build(settings):
        _trusted(settings, "learner")
        if name is not None:
            settings = settings.model_copy(update={"policy_name": name})
        worker = LearnerWorker(settings, _encoder(), config, agent, checkpoint_path=checkpoint,
                               variant=VARIANTS[variant])
        log.info("learner of policy %s (%s) on %s: checkpoint %s", settings.policy_name, variant,
                 worker.learner.device, worker.checkpoint_path)
        return worker

    from models.checkpoint import CheckpointError

    try:
        worker = run_role_or_exit("learner", build, metrics_port)
    except CheckpointError as exc:
        fail(f"{exc}; move the file away to start from scratch, or point --checkpoint elsewhere")
    log.info("learner stopped at version %d after %d updates", worker.version, worker.learner.step)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the HTTP API (0.0.0.0 for all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of POST /score, GET /healthz and GET /metrics (0 picks a free one).")
@option("--slate-size", type=click.IntRange(1, 100), default_from="stream.serving.scorer:ScorerConfig.slate_size",
        help="Items returned when a request does not say k.")
@click.option("--temperature", type=click.FloatRange(min=1e-3), default=None,
              help="Override the softmax temperature each version carries (logged and exported as "
              "recsys_scorer_exploration_overridden; the learner's gate judged the version without it).")
@click.option("--epsilon", type=click.FloatRange(0.0, 1.0), default=None,
              help="Override the share of uniform exploration each version carries (logged and exported).")
@click.option("--no-kafka-requests", is_flag=True, help="Serve HTTP only (no score-requests consumer).")
@TRIM_SECONDS
@mmap_threshold_option(0)
@option("--max-users", type=click.IntRange(1), default_from="stream.serving.scorer:ScorerConfig.max_users",
        help="Users whose recent outcomes are kept for adaptation (the least recently seen go first).")
@option("--user-ttl", type=click.FloatRange(min=1.0), default_from="stream.serving.scorer:ScorerConfig.user_ttl",
        help="Seconds an idle user's recent outcomes are kept.")
@click.option("--arms", default=None,
              help="Run an online experiment: policy names with their shares of users, e.g. A=50,B=50 (default "
              "RECSYS_ARMS; unset: one arm, RECSYS_POLICY_NAME). Each user stays in one arm by a hash of the "
              "user id and --experiment; leaving an arm out on restart moves only its users to the others.")
@click.option("--experiment", default=None,
              help="Experiment name that seeds the assignment (default RECSYS_EXPERIMENT).")
@click.option("--no-item-evidence", is_flag=True,
              help="Serve each version as published, without shifting an item's bias by how its recent outcomes "
              "differed from the version's estimate (models/item_evidence.py).")
def score(host: str, port: int, slate_size: int, temperature: float | None, epsilon: float | None,
          no_kafka_requests: bool, trim_seconds: float, mmap_threshold: int, max_users: int, user_ttl: float,
          arms: str | None, experiment: str | None, no_item_evidence: bool) -> None:
    """Serve scoring with the live policy over HTTP and Kafka; hot-swaps to every new version.

    /metrics is served on the scoring port, so no separate metrics server is started.
    """
    from stream.ops.lifecycle import RoleStartError
    from stream.ops.memory import fix_mmap_threshold

    if mmap_threshold:
        fix_mmap_threshold(mmap_threshold)    # before the encoder, torch and the Kafka clients allocate
    from stream.experiment.arms import Arms, ArmsError
    from stream.serving.scorer import ScorerConfig
    from stream.serving.service import ScorerService

    def build(settings):
        _trusted(settings, "scorer")
        spec = arms or settings.arms
        try:
            experiment_arms = Arms.parse(spec, experiment or settings.experiment) if spec else None
        except ArmsError as exc:
            raise RoleStartError(f"--arms / RECSYS_ARMS: {exc}", 2) from exc
        if experiment_arms is not None:
            log.info("experiment %s: %s", experiment_arms.experiment, experiment_arms.describe())
        try:
            config = ScorerConfig(slate_size, temperature, epsilon, max_users=max_users, user_ttl=user_ttl,
                                  arms=experiment_arms, item_evidence=not no_item_evidence)
            return ScorerService(settings, _encoder(), config, host, port,
                                 kafka_requests=not no_kafka_requests, trim_seconds=trim_seconds)
        except OSError as exc:
            raise RoleStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    run_role_or_exit("scorer", build, metrics_port=None, serve_metrics=False)


@click.command()
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file of the replay store (default: $RECSYS_DATA_DIR/replay/<prefix>replay.db).")
@option("--window", type=click.IntRange(1), default_from="stream.replay.store:StoreConfig.window",
        help="Most recent experiences kept as they are.")
@option("--reservoir", type=click.IntRange(0), default_from="stream.replay.store:StoreConfig.reservoir",
        help="Uniform sample of everything older than the window.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics (default RECSYS_METRICS_PORT; 0 picks a free one).")
def replay(store_path: Path | None, window: int, reservoir: int, metrics_port: int | None) -> None:
    """Run the replay buffer service: consume experiences into the durable replay store."""
    from stream.replay.service import ReplayService, default_store_path
    from stream.replay.store import StoreConfig

    def build(settings):
        log.info("replay service -> %s", store_path or default_store_path(settings))
        return ReplayService(settings, store_path, StoreConfig(window=window, reservoir=reservoir))

    service = run_role_or_exit("replay", build, metrics_port)
    log.info("replay service stopped after %d messages", service.consumed)


def _policy_name(value: str | None) -> str | None:
    from stream.experiment.arms import ARM_NAME

    if value is not None and not ARM_NAME.match(value):
        raise click.BadParameter(f"{value!r}: a policy name is letters, digits, '.', '_' or '-' (at most 128)")
    return value


def _trusted(settings, component: str) -> None:
    """A role that publishes or adopts policy versions starts only with a key, or unsigned allowed explicitly."""
    from stream.ops.lifecycle import RoleStartError
    from stream.policy.trust import UnsignedRefused, announce

    try:
        announce(settings, component)
    except UnsignedRefused as exc:
        raise RoleStartError(str(exc), 2) from exc


def _encoder():
    """The packaged item-text encoder, or a start error that says how to get it."""
    from models.encoders import EncoderLoadError, TextEncoder
    from stream.ops.lifecycle import RoleStartError

    try:
        return TextEncoder()
    except EncoderLoadError as exc:
        raise RoleStartError(str(exc)) from exc
