"""What a fetch costs the embedded broker as a partition's batches pile up, and what it costs elsewhere.

    python -m bench.broker_listing [--steps 5000,10000,20000,40000] [--repeats 200] [--json]

Tansu 0.6.0's memory storage lists a partition's batches on every fetch that finds data there
(docs/ARCHITECTURE.md, "Brokers"). This measures that on the embedded broker: one topic, three
partitions. Partition 0 gets one-record batches (a flush each) in steps; after each step the
median round trip of a Fetch that answers its newest batch, of one that answers the newest
batch of partition 1 (which holds 20 batches throughout), and of one on partition 2 at its end
(nothing to answer, 1 ms wait), over one connection, as the batch census sends them
(``stream/kafka/batch_census.py``). If the listing is per partition, only the first grows.
Tansu answers what it has read when a fetch's wait runs out, so the timed fetches wait up to
500 ms (a fetch returns once it has data); and the share of tail fetches of partition 0 that
get their batch within the waits the loop's consumers use (10-50 ms) is recorded too.
"""

from __future__ import annotations

import socket
import statistics
import time

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from bench.machine import result
from bench.runner import run_benchmark
from stream.config import Settings
from stream.kafka.batch_census import fetch
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.clients import make_admin

TOPIC = "listing"
#: Long enough for any listing here: a fetch returns as soon as it has read its data.
TIMED_WAIT_MS = 500
#: The fetch waits of the loop's consumers (the scorer's Kafka transport, the learner, the join).
CONSUMER_WAITS_MS = (10, 20, 50)


def _fill(producer: Producer, partition: int, batches: int) -> None:
    for _ in range(batches):
        producer.produce(TOPIC, b"x" * 100, partition=partition)
        producer.flush(10)


def _newest_batch(sock: socket.socket, partition: int) -> int:
    """The base offset of a partition's newest batch (a flush may carry more than one record)."""
    high = fetch(sock, 0, {TOPIC: {partition: (0, 1)}}, TIMED_WAIT_MS)[(TOPIC, partition)].high_watermark
    batches = fetch(sock, 1, {TOPIC: {partition: (max(0, high - 64), 1 << 20)}}, TIMED_WAIT_MS)[(TOPIC, partition)].batches
    if not batches:
        raise RuntimeError(f"partition {partition} answered no batch below its end {high}")
    return batches[-1].base_offset


def _fetches(sock: socket.socket, partition: int, offset: int, repeats: int, wait_ms: int) -> tuple[float, float]:
    """Median round trip (ms) of a Fetch from ``offset``, and the share of answers that held a batch."""
    took, answered = [], 0
    for i in range(repeats):
        started = time.perf_counter()
        answer = fetch(sock, i, {TOPIC: {partition: (offset, 1 << 20)}}, wait_ms)[(TOPIC, partition)]
        took.append(time.perf_counter() - started)
        answered += bool(answer.batches)
    return round(statistics.median(took) * 1000, 3), answered / repeats


def measure(steps: list[int], repeats: int = 200, progress=None) -> dict:
    say = progress or (lambda line: None)
    rows = []
    with EmbeddedBroker() as broker:
        admin = make_admin(Settings(bootstrap_servers=broker.bootstrap_servers))
        for future in admin.create_topics([NewTopic(TOPIC, 3, 1)]).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
        _fill(producer, 1, 20)
        held = 0
        with socket.create_connection((broker.host, broker.port or 0), timeout=30) as sock:
            for target in steps:
                say(f"partition 0: {held:,} -> {target:,} batches ...")
                _fill(producer, 0, target - held)
                held = target
                newest = _newest_batch(sock, 0)
                busy, got_busy = _fetches(sock, 0, newest, repeats, TIMED_WAIT_MS)
                other, got_other = _fetches(sock, 1, _newest_batch(sock, 1), repeats, TIMED_WAIT_MS)
                idle, _ = _fetches(sock, 2, 0, repeats, 1)
                if (got_busy, got_other) != (1, 1):
                    raise RuntimeError(f"a tail fetch with a {TIMED_WAIT_MS} ms wait went unanswered "
                                       f"({got_busy:.0%} and {got_other:.0%} answered)")
                within = {str(wait): _fetches(sock, 0, newest, repeats, wait)[1] for wait in CONSUMER_WAITS_MS}
                rows.append({"batches_in_partition_0": held, "fetch_ms_partition_0_tail": busy,
                             "fetch_ms_other_partition_tail": other, "fetch_ms_partition_at_its_end": idle,
                             "tail_answered_within_wait_ms": within})
                say(f"  tail of partition 0 {busy} ms, tail of partition 1 {other} ms, an empty partition {idle} ms; "
                    "tail answered within " + ", ".join(f"{w} ms: {share:.0%}" for w, share in within.items()))
        del producer, admin         # closed while the broker still runs: no reconnect noise as it stops
    first, last = rows[0], rows[-1]
    span = (last["batches_in_partition_0"] - first["batches_in_partition_0"]) / 1000 or 1
    return result("broker_listing", {
        "by_step": rows,
        "ms_per_1000_batches_same_partition": round(
            (last["fetch_ms_partition_0_tail"] - first["fetch_ms_partition_0_tail"]) / span, 3),
        "ms_per_1000_batches_other_partition": round(
            (last["fetch_ms_other_partition_tail"] - first["fetch_ms_other_partition_tail"]) / span, 3),
    }, {"steps": steps, "repeats": repeats, "timed_wait_ms": TIMED_WAIT_MS, "record_bytes": 100,
        "broker": "embedded Tansu"})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--steps", default="5000,10000,20000,40000",
                            help="batches partition 0 holds at each measurement, rising")
        parser.add_argument("--repeats", type=int, default=200, help="fetches timed per figure")

    def run(args, say):
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
        if not steps or steps != sorted(steps) or steps[0] < 1 or len(set(steps)) != len(steps):
            raise SystemExit(f"--steps must be rising positive batch counts, not {args.steps!r}")
        if args.repeats < 1:
            raise SystemExit("--repeats must be at least 1")
        return measure(steps, args.repeats, say)

    def summary(out):
        m = out["metrics"]
        return (f"a fetch with data: +{m['ms_per_1000_batches_same_partition']} ms per 1,000 batches its partition "
                f"holds; +{m['ms_per_1000_batches_other_partition']} ms per 1,000 batches held by another")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    raise SystemExit(main())
