"""The reward join's durable state: a compacted changelog topic, one record per held thing.

The join holds impressions for their click and purchase windows and parks clicks
that overtook their impression. Committing input offsets past those events is only
safe if the state they built survives the worker: so every checkpoint writes what
changed (a request, a rejected orphan's id, a parked event, a partition's event-time
progress) to the ``join-state`` topic, partition p holding the state of input
partition p, keyed so compaction keeps the latest copy and a tombstone removes what
the join let go. A request has one record for its whole life: written when it opens
(again only if something joins it after a checkpoint) and tombstoned once it leaves
the dedupe horizon. Its click window closing and its purchase window ending (it is
then forgotten, its event ids kept to recognise repeats) are not written: a restore
derives both from the checkpoint's watermark, since each happened exactly when event
time passed its deadline. (Changelogs written before kept a forgotten request under
its own ``f/`` key; they still restore, and those keys are tombstoned on expiry.) A
worker that is assigned partition p (after a crash or a rebalance) reads partition
p of the changelog to its end and resumes exactly where the committed offsets say.

A checkpoint is atomic: its last record is always the partition's progress record,
which marks everything before it as committed. A crash in the middle of writing a
checkpoint leaves a tail after the last progress record; a restore ignores that
tail and the restoring worker writes it back over (``Changelog.rollback``), so a
later restore never mistakes it for committed state.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from stream.config import Settings
from stream.kafka.snapshot import read_topic
from stream.schemas import Impression

REQUEST = b"r/"
FORGOTTEN = b"f/"
REJECTED = b"x/"
PARKED = b"p/"
PROGRESS = b"w"


class RequestRecord(msgspec.Struct, array_like=True):
    impression: Impression
    clicked: list[str]
    purchased: list[str]
    closed: bool
    events: list[str]


class ForgottenRecord(msgspec.Struct, array_like=True):
    """A request past its purchase window, as older changelogs held it: its event ids still deduplicate
    re-read inputs. Read on restore, no longer written."""

    ts: float
    events: list[str]


class RejectedRecord(msgspec.Struct, array_like=True):
    """An orphan already dead-lettered: a re-read of it is a repeat, not a second dead letter."""

    ts: float


class ParkedRecord(msgspec.Struct, array_like=True):
    """A click or purchase waiting for its impression, as it arrived (so it can still be dead-lettered as is)."""

    logical: str
    raw: bytes
    topic: str
    partition: int
    offset: int
    key: bytes | None


class ProgressRecord(msgspec.Struct, array_like=True):
    """Per-input event-time progress and the watermark the join has reached."""

    progress: dict[str, float]
    last: float
    watermark: float


_encoder = msgspec.msgpack.Encoder()
_decoders: dict[bytes, msgspec.msgpack.Decoder] = {
    REQUEST: msgspec.msgpack.Decoder(RequestRecord),
    FORGOTTEN: msgspec.msgpack.Decoder(ForgottenRecord),
    REJECTED: msgspec.msgpack.Decoder(RejectedRecord),
    PARKED: msgspec.msgpack.Decoder(ParkedRecord),
    PROGRESS: msgspec.msgpack.Decoder(ProgressRecord),
}


def request_key(request_id: str) -> bytes:
    return REQUEST + request_id.encode()


def forgotten_key(request_id: str) -> bytes:
    return FORGOTTEN + request_id.encode()


def rejected_key(event_id: str) -> bytes:
    return REJECTED + event_id.encode()


def parked_key(event_id: str) -> bytes:
    return PARKED + event_id.encode()


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


def kind_of(key: bytes) -> bytes:
    return PROGRESS if key == PROGRESS else key[:2]


def decode(key: bytes, value: bytes) -> RequestRecord | ForgottenRecord | RejectedRecord | ParkedRecord | ProgressRecord:
    decoder = _decoders.get(kind_of(key))
    if decoder is None:
        raise ValueError(f"unknown join-state key {key[:40]!r}")
    return decoder.decode(value)


class Changelog(msgspec.Struct):
    """One partition's changelog as read back: the committed state and the uncommitted tail to undo."""

    live: dict[bytes, bytes]
    rollback: list[tuple[bytes, bytes | None]]


def latest(records: Iterable[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """The committed value per key of a changelog read in order (see ``committed``)."""
    return committed(records).live


def committed(records: Iterable[tuple[bytes, bytes | None]]) -> Changelog:
    """Replay a changelog in order up to its last progress record (a tombstone deletes the key).

    Records after the last progress record belong to a checkpoint a crash cut short: they are
    left out, and ``rollback`` gives, for each key they touched, the committed value (or a
    tombstone) to write back before the next checkpoint.
    """
    live: dict[bytes, bytes] = {}
    tail: list[tuple[bytes, bytes | None]] = []
    for key, value in records:
        tail.append((key, value))
        if key == PROGRESS:
            for k, v in tail:
                if v is None:
                    live.pop(k, None)
                else:
                    live[k] = v
            tail.clear()
    touched = dict.fromkeys(k for k, _ in tail)
    return Changelog(live, [(k, live.get(k)) for k in touched])


def read_partitions(settings: Settings, topic: str, partitions: list[int],
                    timeout: float = 60.0) -> dict[int, Changelog]:
    """The given changelog partitions from their beginning to their end, each replayed in memory."""
    records: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in partitions}
    for msg in read_topic(settings, topic, "process-restore", timeout, partitions):
        records[msg.partition()].append((msg.key(), msg.value()))
    return {p: committed(rs) for p, rs in records.items()}
