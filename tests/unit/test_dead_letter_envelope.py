"""The dead-letter envelope keeps origin and reason, and bounds what it copies."""

from __future__ import annotations

from stream import schemas
from stream.kafka.dead_letters import envelope


def test_envelope_carries_coordinates_and_round_trips():
    letter = envelope("p.clicks", b"{bad", "malformed_json", "JSON is malformed", "process",
                      key=b"u1", partition=3, offset=42)
    back = schemas.decode("dlq", schemas.encode(letter))
    assert (back.source_topic, back.partition, back.offset, back.key) == ("p.clicks", 3, 42, b"u1")
    assert back.original == b"{bad" and back.original_size == 4 and not back.original_truncated


def test_huge_original_is_cut_but_its_size_is_kept():
    raw = b"x" * (schemas.MAX_DEAD_LETTER_ORIGINAL_BYTES * 3)
    letter = envelope("clicks", raw, "oversized", "too big", "ingest", line=7)
    assert len(letter.original) == schemas.MAX_DEAD_LETTER_ORIGINAL_BYTES
    assert letter.original_size == len(raw) and letter.original_truncated
    assert schemas.decode("dlq", schemas.encode(letter)).line == 7
