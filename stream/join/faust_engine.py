"""The reward-join stream processor: a faust-streaming app around ``RewardProcessor``.

One agent consumes impressions, clicks and purchases (co-partitioned by user_id)
and hands each message to the processor; experiences and dead letters go out
through an idempotent producer. A timer moves event time for inputs that have gone
quiet (a partition with no purchases must not stall the closing of click windows)
and flushes the producer.

The alternative engine (``process --engine faust``); the default is the batch consumer of
``worker.py``, and ``RewardProcessor`` serves both. Its limits, stated in the README and
the command's help: the join state is held in memory, so a restart loses the windows that
were open (the offsets faust committed are past them), and faust's per-message path reads
about 4k events/s on a 2-core machine, against the batch engine's 23-25k.
"""

from __future__ import annotations

import logging
import time

import faust

from stream.config import Settings
from stream.join.processor import SOURCES, Coordinates, Outcome, RewardProcessor
from stream.join.reward_join import JoinConfig
from stream.kafka.producer import EventProducer
from stream.kafka.topics import topic_name
from stream.ops.lifecycle import StopDeadline

log = logging.getLogger(__name__)


class _DeadlineWorker(faust.Worker):
    """faust's worker with its SIGTERM/SIGINT handlers also arming a ``StopDeadline``: faust stops its
    services one by one, and with the broker gone a consumer's or producer's stop can wait on it."""

    def __init__(self, *args, deadline: StopDeadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _on_sigint(self) -> None:
        self.deadline.arm()
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self.deadline.arm()
        super()._on_sigterm()


class RewardWorker:
    def __init__(self, settings: Settings, join: JoinConfig | None = None, idle_after: float = 2.0) -> None:
        self.settings = settings
        self.processor = RewardProcessor(join or JoinConfig(), component="process", checkpointed=False,
                                         user_features=settings.user_features)
        self.producer = EventProducer(settings, component="process")
        self.idle_after = idle_after
        self.names = {topic_name(settings, s): s for s in SOURCES}
        self.dlq_topic = topic_name(settings, "dlq")
        self.last_seen: dict[tuple[int, str], float] = {}
        self.idle: set[tuple[int, str]] = set()
        self.last_tick = time.monotonic()
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        settings = self.settings
        state_dir = settings.data_dir / "faust"
        state_dir.mkdir(parents=True, exist_ok=True)       # faust creates only the last level
        app = faust.App(
            f"{settings.topic_prefix}rewards",
            broker=f"kafka://{settings.require_bootstrap('process')}",
            store="memory://",
            topic_partitions=settings.partitions,
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=6.0,
            web_enabled=False,
            topic_allow_declare=False,
            # Under the data directory, not the working directory (faust's default litters the cwd).
            datadir=str(state_dir / f"{settings.topic_prefix}rewards-data"),
        )
        source = app.topic(*self.names, value_serializer="raw", key_serializer="raw")

        @app.agent(source)
        async def join(stream):
            async for event in stream.events():
                message = event.message
                logical = self.names[message.topic]
                where = Coordinates(message.topic, message.partition, message.offset, message.key)
                self._emit(self.processor.handle(logical, event.value, where))
                self.last_seen[(message.partition, logical)] = time.monotonic()
                self.idle.discard((message.partition, logical))

        @app.timer(0.5)
        async def tick():
            now = time.monotonic()
            elapsed, self.last_tick = now - self.last_tick, now
            for partition in list(self.processor.joins):
                for logical in SOURCES:
                    key = (partition, logical)
                    if key not in self.idle and now - self.last_seen.get(key, 0.0) > self.idle_after:
                        self.idle.add(key)
                        self._emit(self.processor.reached_end(logical, partition))
                if all((partition, logical) in self.idle for logical in SOURCES):
                    # A silent partition: event time runs on with the wall clock so windows close.
                    self._emit(self.processor.idle(partition, elapsed))
            self.processor.publish_metrics()
            self.producer.flush(10)

        return app

    def _emit(self, out: Outcome) -> None:
        self.producer.send_many("experiences", out.experiences)
        for letter in out.dead_letters:
            self.producer.dead_letters.publish(letter)

    def run(self) -> None:
        worker = _DeadlineWorker(self.app, loglevel="warning", quiet=True, redirect_stdouts=False,
                                 deadline=StopDeadline("process", self.settings.stop_grace_seconds))
        try:
            worker.execute_from_commandline()
        finally:
            self.producer.release()
