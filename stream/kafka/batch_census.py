"""How many record batches a broker holds, per topic: the figure the embedded broker's cost follows.

Tansu's memory storage lists every batch of a partition on each fetch that finds data there and
keeps about a kilobyte per batch beyond its bytes (docs/ARCHITECTURE.md, "Brokers"), so its CPU
and memory follow the batches its topics hold, not the records. No client library shows batch
boundaries (librdkafka hands out records), so the census reads them with plain Fetch requests
(version 4: the oldest Kafka 4 still serves, and Tansu 0.6.0 answers it) and counts each batch
once. Every partition keeps a cursor, and a census reads only what was written since the last
one, up to the high watermark that census saw: Tansu gives a batch its offsets before it stores
it, so the newest offsets may not be readable yet. Tansu 0.6.0 spends one byte budget (5 MB) on
a request's partitions in order and ignores each partition's own, so a partition with much to
read is read on its own: one busy topic cannot starve the others of a whole census.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FETCH, FETCH_VERSION = 1, 4
#: Tansu drops what a fetch has not read by the end of its wait: a partition whose batches take longer to
#: list than the wait is answered with nothing (3,000 batches: nothing at 1 ms, 1,398 of 3,000 at 20 ms, all at
#: 100 ms; tried on 0.6.0). A wait ends early once data is found, and the census is not latency-bound.
CENSUS_WAIT_MS = 500
MAX_BYTES = 8 << 20
PARTITION_MAX_BYTES = 1 << 20
#: The header fields before ``lastOffsetDelta`` in a v2 record batch, after ``baseOffset`` and ``batchLength``.
_BATCH_HEAD = struct.Struct(">qiibihi")


class CensusError(RuntimeError):
    """The broker's answer could not be read as a Fetch v4 response."""


@dataclass(frozen=True)
class Batch:
    base_offset: int
    records: int
    size: int            # bytes on the wire, header included

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.records


@dataclass
class Held:
    """What one topic holds, as far as the census has read."""
    batches: int = 0
    records: int = 0
    bytes: int = 0


def batches_in(records: bytes) -> Iterator[Batch]:
    """The whole v2 record batches in a fetch's ``records`` field (a trailing partial one is skipped,
    as a client does)."""
    at = 0
    while at + _BATCH_HEAD.size + 4 <= len(records):
        base, length, _epoch, magic, _crc, _attrs, last_delta = _BATCH_HEAD.unpack_from(records, at)
        if magic != 2:
            raise CensusError(f"record batch at offset {base} has magic {magic}; only v2 batches are counted")
        if length < _BATCH_HEAD.size - 12 + 4 or last_delta < 0:
            raise CensusError(f"record batch at offset {base} has length {length} and last offset delta {last_delta}")
        end = at + 12 + length
        if end > len(records):
            return
        yield Batch(base, last_delta + 1, end - at)
        at = end


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def fetch_request(correlation: int, wanted: dict[str, dict[int, tuple[int, int]]],
                  wait_ms: int = CENSUS_WAIT_MS) -> bytes:
    """A framed Fetch v4 request for ``{topic: {partition: (offset, max bytes)}}``."""
    body = [struct.pack(">iiiibi", -1, wait_ms, 1, MAX_BYTES, 0, len(wanted))]
    for topic, partitions in wanted.items():
        body.append(_string(topic) + struct.pack(">i", len(partitions)))
        body.extend(struct.pack(">iqi", p, offset, most) for p, (offset, most) in partitions.items())
    message = struct.pack(">hhi", FETCH, FETCH_VERSION, correlation) + _string("recsys-batch-census") + b"".join(body)
    return struct.pack(">i", len(message)) + message


@dataclass(frozen=True)
class PartitionAnswer:
    error: int
    high_watermark: int
    batches: list[Batch]


def parse_fetch_response(frame: bytes, correlation: int) -> dict[tuple[str, int], PartitionAnswer]:
    """``{(topic, partition): answer}`` from a Fetch v4 response (without its length prefix)."""
    try:
        got, _throttle, topics = struct.unpack_from(">iii", frame, 0)
        if got != correlation:
            raise CensusError(f"answer to request {got} where {correlation} was awaited")
        at, answers = 12, {}
        for _ in range(topics):
            (name_len,) = struct.unpack_from(">h", frame, at)
            topic = frame[at + 2:at + 2 + name_len].decode()
            at += 2 + name_len
            (partitions,) = struct.unpack_from(">i", frame, at)
            at += 4
            for _ in range(partitions):
                partition, error, high, _stable, aborted = struct.unpack_from(">ihqqi", frame, at)
                at += 26 + 16 * max(aborted, 0)
                (size,) = struct.unpack_from(">i", frame, at)
                at += 4
                records = frame[at:at + max(size, 0)]
                at += max(size, 0)
                answers[(topic, partition)] = PartitionAnswer(error, high, list(batches_in(records)))
        return answers
    except (struct.error, UnicodeDecodeError) as exc:
        raise CensusError(f"malformed Fetch response: {exc}") from exc


def fetch(sock: socket.socket, correlation: int, wanted: dict[str, dict[int, tuple[int, int]]],
          wait_ms: int = CENSUS_WAIT_MS) -> dict[tuple[str, int], PartitionAnswer]:
    """One Fetch v4 round trip over ``sock``: ``{topic: {partition: (offset, max bytes)}}`` asked,
    ``{(topic, partition): answer}`` read back."""
    sock.sendall(fetch_request(correlation, wanted, wait_ms))
    (length,) = struct.unpack(">i", _read_exactly(sock, 4))
    return parse_fetch_response(_read_exactly(sock, length), correlation)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    if not 0 <= size <= 4 * MAX_BYTES:
        raise CensusError(f"answer of {size} bytes")
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise CensusError("the broker closed the connection mid-answer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class BatchCensus:
    """Counts the batches each topic holds, a little more each ``update``; one broker, one connection.

    ``budget_s`` bounds one update's reading; what it leaves is read by the next, and ``unread``
    says how many offsets that is (0: the census is whole up to the last one's end)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, budget_s: float = 20.0) -> None:
        self.address, self.timeout, self.budget_s = (host, port), timeout, budget_s
        self.held: dict[str, Held] = {}
        self.unread = 0
        self._cursor: dict[tuple[str, int], int] = {}
        self._limit: dict[tuple[str, int], int] = {}
        self._sock: socket.socket | None = None
        self._admin: Any = None
        self._correlation = 0

    def update(self, partitions: dict[str, int] | None = None) -> dict[str, Held]:
        """Reads what ``{topic: partition count}`` (default: every topic but the broker's own) gained
        since the last update, up to the high watermarks the last update saw; returns every topic's
        running totals."""
        if partitions is None:
            partitions = self.topics()
        wanted = {(topic, p) for topic, count in partitions.items() for p in range(count)}
        for gone in set(self.held) - set(partitions):          # a deleted topic holds nothing
            del self.held[gone]
        for tp in [tp for tp in self._cursor if tp not in wanted]:
            del self._cursor[tp], self._limit[tp]
        for tp in wanted:
            self.held.setdefault(tp[0], Held())
            self._cursor.setdefault(tp, 0)
            self._limit.setdefault(tp, 0)
        deadline = time.monotonic() + self.budget_s
        # One request learns every partition's end and reads what fits of what is due ...
        answers = self._fetch(wanted) if wanted else {}
        for tp, answer in answers.items():
            if not answer.error:
                self._count(tp, answer.batches)
        # ... then each partition still due is read on its own until it is whole or time is up.
        for tp in sorted(wanted):
            while self._cursor[tp] < self._limit[tp] and time.monotonic() < deadline:
                answer = self._fetch({tp}).get(tp)
                if answer is None or answer.error or not self._count(tp, answer.batches):
                    break
        self.unread = sum(max(0, self._limit[tp] - self._cursor[tp]) for tp in wanted)
        for tp, answer in answers.items():
            self._limit[tp] = max(self._limit[tp], answer.high_watermark)
        return self.held

    def topics(self) -> dict[str, int]:
        """``{topic: partition count}`` of every topic on the broker but its internal ones."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient
            self._admin = AdminClient({"bootstrap.servers": f"{self.address[0]}:{self.address[1]}", "log_level": 0})
        meta = self._admin.list_topics(timeout=self.timeout)
        return {name: len(topic.partitions) for name, topic in meta.topics.items() if not name.startswith("__")}

    def _count(self, tp: tuple[str, int], batches: list[Batch]) -> bool:
        """Counts the batches between the cursor and the limit; whether the cursor moved."""
        moved, held = False, self.held[tp[0]]
        for batch in batches:
            if batch.base_offset < self._cursor[tp]:
                continue              # a real Kafka answers from the batch holding the offset
            if batch.base_offset >= self._limit[tp]:
                if not moved:         # nothing is stored below the limit: offsets given out, never written
                    self._cursor[tp], moved = self._limit[tp], True
                break
            held.batches, held.records, held.bytes = held.batches + 1, held.records + batch.records, \
                held.bytes + batch.size
            self._cursor[tp], moved = batch.next_offset, True
        return moved

    def _fetch(self, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], PartitionAnswer]:
        by_topic: dict[str, dict[int, tuple[int, int]]] = {}
        for topic, p in sorted(wanted):
            cursor = self._cursor[(topic, p)]
            # Where nothing is due, one batch (a broker's least answer) still tells the high watermark.
            by_topic.setdefault(topic, {})[p] = (cursor, PARTITION_MAX_BYTES if cursor < self._limit[(topic, p)] else 1)
        self._correlation = (self._correlation + 1) & 0x7FFFFFFF
        try:
            return fetch(self._connect(), self._correlation, by_topic)
        except (OSError, CensusError):
            self.close()              # a fresh connection next time: no half-read answer left on it
            raise

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
        return self._sock

    def __enter__(self) -> BatchCensus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

