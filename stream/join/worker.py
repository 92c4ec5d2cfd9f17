"""The reward-join worker on a batch consumer: the default engine of ``recsys-stream process``.

Why not the faust agent (``stream/join/faust_engine.py``): faust's per-message path reads
about 4-5k events/s here and keeps the join state in memory, so a restart or a
rebalance loses open windows. This worker reads batches with confluent-kafka,
drives the same ``RewardProcessor``, and makes each batch durable in three steps,
in this order:

1. experiences and dead letters are produced and acknowledged;
2. what the batch changed in the join state goes to the ``join-state`` changelog
   (``stream/join/state.py``) and is acknowledged;
3. the input offsets are committed.

A worker that dies between any two steps restarts from the last committed offsets
with the state of step 2, so an input is either re-read into a state that does not
yet hold it, or recognised as a duplicate by a state that does: nothing is lost, no
reward part is paid twice, and experiences re-emitted after a crash carry the same
deterministic ids (idempotent sinks such as the replay store ignore them).
Partition p of impressions, clicks and purchases always go to one worker (range
assignment over co-partitioned topics); on assignment the worker restores partition
p's state from the changelog, on revocation it checkpoints and lets it go.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import OffsetSpec

from stream.config import Settings
from stream.join.processor import SOURCES, Coordinates, Outcome, RewardProcessor
from stream.join.reward_join import JoinConfig
from stream.join.state import read_partitions
from stream.kafka.clients import make_admin, make_consumer
from stream.kafka.gaps import GapGuard
from stream.kafka.metrics import ASSIGNED_PARTITIONS, LagReporter
from stream.kafka.producer import EventProducer
from stream.kafka.topics import topic_name

log = logging.getLogger(__name__)


#: Messages per consumed batch: large enough that per-batch costs (checkpoints, tallies) vanish per event.
BATCH = 5000


class JoinWorker:
    def __init__(self, settings: Settings, join: JoinConfig | None = None, *, batch: int = BATCH,
                 idle_after: float = 2.0, checkpoint_every: float = 0.2, idle_exit: float | None = None,
                 until_caught_up: bool = False) -> None:
        self.settings = settings
        self.idle_exit = idle_exit
        #: A backfill: stop once every owned input partition is read to its end, after closing every window.
        self.until_caught_up = until_caught_up
        self.finished = False
        self.processor = RewardProcessor(join or JoinConfig(), component="process",
                                         user_features=settings.user_features)
        # Each checkpoint flushes (a flush sends at once, whatever the linger), so lingering up to one
        # checkpoint interval delays an experience by at most that, and sends experiences in batches of
        # tens that compress several-fold, instead of one record per batch at a few ms.
        self.output = EventProducer(settings, component="process",
                                    **{"linger.ms": max(5, int(checkpoint_every * 1000))})
        self.names = {topic_name(settings, s): s for s in SOURCES}
        self.topics = {s: t for t, s in self.names.items()}
        self.lag = LagReporter("process", self.names)
        self.admin = make_admin(settings, "process")
        self.changelog = topic_name(settings, "join-state")
        self.group = f"{settings.topic_prefix}rewards"
        self.batch = batch
        self.idle_after = idle_after
        self.checkpoint_every = checkpoint_every
        self.stop_event = threading.Event()
        self.owned: set[int] = set()
        self.positions: dict[tuple[str, int], int] = {}   # next offset to commit per input partition
        self.last_message_at = 0.0
        self.consumed = 0
        self.drained = False
        self.assigned_at = 0.0
        self._dirty = False
        #: Set by any failure in a batch or a checkpoint: from then on nothing is committed (not on
        #: revocation while the consumer closes either), so a restart re-reads from durable state.
        self.failed: BaseException | None = None

    # -- group membership -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = sorted({tp.partition for tp in partitions} - self.owned)
        if new:
            started = time.monotonic()
            states = read_partitions(self.settings, self.changelog, new)
            undone = 0
            for p, changelog in states.items():
                self.processor.restore(p, changelog.live)
                self.owned.add(p)
                # A checkpoint a crash cut short: write the committed values back over its records
                # (closed by a progress record) so no later restore reads them as committed.
                if changelog.rollback:
                    for key, value in changelog.rollback + self.processor.progress_marker(p):
                        self.output.send_record("join-state", key, value, p)
                    undone += len(changelog.rollback)
            if undone:
                self.output.flush()
            log.info("partitions %s: restored %s state records in %.2fs (undid %d uncommitted)", new,
                     "/".join(str(len(states[p].live)) for p in new), time.monotonic() - started, undone)
        # Where each input resumes: the committed offset, or the start of a partition never read.
        now = self.assigned_at = time.monotonic()
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            self.positions[(tp.topic, tp.partition)] = max(tp.offset, 0)
        self.guard.expect(committed)
        self.last_message_at = now   # quiet counts from here
        consumer.assign(partitions)
        ASSIGNED_PARTITIONS.labels("process").set(len(self.owned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.failed is None:
            try:
                self._checkpoint(consumer)
            except Exception as exc:  # noqa: BLE001 - logged; the partitions go without a commit
                self.failed = exc
                log.exception("checkpoint on revocation failed; nothing committed")
        else:
            log.warning("partitions %s revoked after a failure: not committing past unwritten state",
                        sorted({tp.partition for tp in partitions}))
        self._release({tp.partition for tp in partitions})
        self.guard.forget(partitions)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another worker owns them now: do not commit, just forget.
        log.warning("partitions lost: %s", sorted({tp.partition for tp in partitions}))
        self._release({tp.partition for tp in partitions})
        self.guard.forget(partitions)
        consumer.unassign()

    def _release(self, numbers: set[int]) -> None:
        for p in numbers:
            self.processor.drop(p)
            self.owned.discard(p)
        self.positions = {k: v for k, v in self.positions.items() if k[1] not in numbers}
        ASSIGNED_PARTITIONS.labels("process").set(len(self.owned))

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Join until ``stop()`` (or ``idle_exit`` seconds without input, for finite runs).

        The topics must exist (``stream.ops.lifecycle.run_role`` ensures them at start).
        """
        idle_exit = self.idle_exit
        consumer = make_consumer(self.settings, "process", self.group, **{
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
        })
        self.guard = GapGuard(consumer, "process")
        consumer.subscribe(list(self.names), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        last_input = last_checkpoint = last_tick = last_report = last_end_check = time.monotonic()
        try:
            while not self.stop_event.is_set():
                messages = consumer.consume(self.batch, 0.1)
                now = time.monotonic()
                self.drained = len(messages) < self.batch
                messages = self.guard.admit(messages)
                if self._handle(messages, now):
                    last_input = now
                if self.until_caught_up and self.drained and self.assigned_at and now - last_end_check >= 0.25:
                    last_end_check = now
                    if self._finish_if_read_to_end():
                        break
                if now - last_tick >= 0.5:
                    self._tick(now, now - last_tick)
                    last_tick = now
                if self._dirty and (now - last_checkpoint >= self.checkpoint_every or len(messages) >= self.batch):
                    self._checkpoint(consumer)
                    last_checkpoint = now
                self.lag.maybe_report(consumer, now)
                if now - last_report >= 10.0:
                    last_report = now
                    log.info("consumed %d messages; next offsets %s", self.consumed, self._positions_text())
                if idle_exit is not None and self.assigned_at and now - max(last_input, self.assigned_at) > idle_exit:
                    break
            self._checkpoint(consumer)
        except BaseException as exc:
            # Fail closed: whatever this batch or checkpoint did not make durable must be read again.
            self.failed = exc
            raise
        finally:
            consumer.close()
            self.output.release()

    def _handle(self, messages: list[Message], now: float) -> bool:
        consumed = False
        for msg in messages:
            topic, partition = msg.topic(), msg.partition()
            err = msg.error()
            if err is not None:
                log.warning("consume error: %s", err.str())
                continue
            if partition not in self.owned:
                continue  # delivered after a revocation: the new owner reads it
            logical = self.names[topic]
            where = Coordinates(topic, partition, msg.offset(), msg.key())
            self._emit(self.processor.handle(logical, msg.value(), where))
            self.positions[(topic, partition)] = msg.offset() + 1
            self.last_message_at = now
            self._dirty = consumed = True
            self.consumed += 1
        return consumed

    def _tick(self, now: float, elapsed: float) -> None:
        """Once the worker has read nothing at all for ``idle_after``, inputs that are caught up stop
        holding event time back, and a partition whose inputs all are lets event time run on with
        the clock (so its last windows close).

        Worker-wide quiet, not per input: Tansu and librdkafka can leave one partition unfetched
        for seconds while another's backlog fills every batch, and an input judged idle then
        let windows close (and requests be forgotten) before its clicks or purchases were read.
        The price: while traffic flows, a silent input holds event time back until it speaks.

        And the release lasts only while it is true: an input found with records on the broker
        beyond our position holds event time back again (a partition left unfetched after
        being judged caught up would otherwise see its clicks arrive after their windows closed).
        """
        idle = now - self.last_message_at > self.idle_after
        judged = {p: self.processor.caught_up_inputs(p) for p in self.owned}
        asked = SOURCES if idle and self.drained else None     # idle: every input's end is needed below
        ends = self._broker_ends({(self.topics[s], p) for p, caught in judged.items() for s in (asked or caught)})
        for p, caught in judged.items():
            for logical in caught:
                if self._unread_on_broker(ends, logical, p):
                    self.processor.fell_behind(logical, p)
        if not idle:
            return
        for p in self.owned:
            quiet = [s for s in SOURCES if self._caught_up(ends, s, p)]
            for logical in quiet:
                self._emit(self.processor.reached_end(logical, p))
            if len(quiet) == len(SOURCES):
                self._emit(self.processor.idle(p, elapsed))

    def _finish_if_read_to_end(self) -> bool:
        """Backfill: once every input partition this worker owns is read to the broker's end, close
        every window by event time (``RewardProcessor.finish``); the caller checkpoints and exits."""
        ends = self._broker_ends({(self.topics[s], p) for p in self.owned for s in SOURCES})
        if not all(self._caught_up(ends, s, p) for p in self.owned for s in SOURCES):
            return False
        for p in sorted(self.owned):
            self._emit(self.processor.finish(p))
        self._dirty = self.finished = True
        log.info("backfill read to the end of partitions %s after %d messages; every window closed",
                 sorted(self.owned), self.consumed)
        return True

    def _unread_on_broker(self, ends: dict[tuple[str, int], int | None], logical: str, partition: int) -> bool:
        topic = self.topics[logical]
        high = ends.get((topic, partition))
        return high is not None and high > self.positions.get((topic, partition), 0)

    def _broker_ends(self, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Each partition's end as the broker reports it now (None where it does not answer), in one
        ListOffsets request: one request per partition (12 for 4 partitions of 3 inputs) stalled
        a tick for up to a second under load."""
        if not partitions:
            return {}
        ends: dict[tuple[str, int], int | None] = dict.fromkeys(partitions)
        try:
            futures = self.admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions},
                                              request_timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - the broker did not answer: nothing provable either way
            log.debug("partition ends unavailable: %s", exc)
            return ends
        for tp, future in futures.items():
            try:
                high = future.result(timeout=5.0).offset
            except Exception as exc:  # noqa: BLE001 - as above, for this partition
                log.debug("end of %s[%d] unavailable: %s", tp.topic, tp.partition, exc)
                continue
            ends[(tp.topic, tp.partition)] = high if high >= 0 else None
        return ends

    def _caught_up(self, ends: dict[tuple[str, int], int | None], logical: str, partition: int) -> bool:
        """The last batch drained the local queue and our position has reached the partition's end
        as the broker reports it now.

        Neither partition EOF nor the cached high watermark will do: both can be stale from
        start-up while another input's backlog fills every batch and this input's records
        wait unfetched, and treating such an input as idle closed windows before their
        clicks were read. (Tansu answers "latest" with the last batch's base offset + 1:
        reaching it means that batch was fetched, and a drained queue means delivered.)
        """
        if not self.drained:
            return False
        topic = self.topics[logical]
        position = self.positions.get((topic, partition))
        if position is None:
            return False
        high = ends.get((topic, partition))
        return high is not None and position >= high

    def _emit(self, out: Outcome) -> None:
        self.output.send_many("experiences", out.experiences)
        for letter in out.dead_letters:
            self.output.dead_letters.publish(letter)
        if out.experiences or out.dead_letters:
            self._dirty = True

    def _checkpoint(self, consumer: Consumer) -> None:
        """Outputs acknowledged, then state changes acknowledged, then offsets committed.

        Any exception leaves the offsets where the last complete checkpoint put them.
        """
        if self.failed is not None:
            raise RuntimeError("the join worker failed earlier; refusing to commit") from self.failed
        self.output.flush()
        wrote = 0
        for p in sorted(self.owned):
            wrote += self.output.send_records("join-state", self.processor.changes(p), p)
        if wrote:
            self.output.flush()
        self.processor.publish_metrics()
        if self.positions:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self.positions.items()],
                            asynchronous=False)
        self._dirty = False

    def _positions_text(self) -> str:
        return ", ".join(f"{self.names[t]}[{p}]={o}" for (t, p), o in sorted(self.positions.items()))

    def stop(self) -> None:
        self.stop_event.set()
