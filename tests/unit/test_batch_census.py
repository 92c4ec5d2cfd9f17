"""Reading record batches out of Fetch v4 answers: whole batches counted, partial ones left for the next
read, anything that is not a v2 batch or a well-formed answer refused with a clear error."""

from __future__ import annotations

import struct

import pytest

from stream.kafka.batch_census import Batch, CensusError, batches_in, fetch_request, parse_fetch_response


def batch(base: int, records: int, payload: bytes = b"x" * 30, magic: int = 2) -> bytes:
    """A v2 record batch's header with ``payload`` standing for its records (the census reads no further)."""
    after_length = struct.pack(">ibihi", 0, magic, 0, 0, records - 1) + payload
    return struct.pack(">qi", base, len(after_length)) + after_length


def answer(correlation: int, partitions: dict[tuple[str, int], tuple[int, int, bytes]]) -> bytes:
    """A Fetch v4 response body for ``{(topic, partition): (error, high watermark, records)}``."""
    by_topic: dict[str, list[bytes]] = {}
    for (topic, p), (error, high, records) in partitions.items():
        by_topic.setdefault(topic, []).append(
            struct.pack(">ihqqi", p, error, high, high, 0) + struct.pack(">i", len(records)) + records)
    out = struct.pack(">iii", correlation, 0, len(by_topic))
    for topic, parts in by_topic.items():
        out += struct.pack(">h", len(topic)) + topic.encode() + struct.pack(">i", len(parts)) + b"".join(parts)
    return out


def test_whole_batches_are_counted_and_a_trailing_partial_one_is_left():
    records = batch(0, 3) + batch(3, 2, b"y" * 100) + batch(5, 4)[:20]
    assert list(batches_in(records)) == [Batch(0, 3, len(batch(0, 3))), Batch(3, 2, len(batch(3, 2, b"y" * 100)))]
    assert Batch(3, 2, 1).next_offset == 5


def test_an_old_message_format_is_refused_by_name():
    with pytest.raises(CensusError, match="magic 1"):
        list(batches_in(batch(0, 1, magic=1)))


def test_an_answer_is_read_per_partition_with_its_high_watermark():
    frame = answer(7, {("a", 0): (0, 5, batch(0, 3) + batch(3, 2)), ("a", 1): (0, 0, b""), ("b", 0): (3, -1, b"")})
    got = parse_fetch_response(frame, 7)
    assert [b.base_offset for b in got[("a", 0)].batches] == [0, 3] and got[("a", 0)].high_watermark == 5
    assert got[("a", 1)].batches == [] and got[("b", 0)].error == 3


@pytest.mark.parametrize("frame, why", [
    (answer(8, {("a", 0): (0, 1, batch(0, 1))}), "answer to request 8"),
    (answer(7, {("a", 0): (0, 1, batch(0, 1))})[:30], "malformed"),
])
def test_a_wrong_or_cut_answer_is_a_census_error(frame, why):
    with pytest.raises(CensusError, match=why):
        parse_fetch_response(frame, 7)


def test_a_request_names_every_partition_with_its_offset_and_budget():
    frame = fetch_request(9, {"topic": {0: (12, 1 << 20), 3: (0, 1)}})
    (length,) = struct.unpack_from(">i", frame)
    assert length == len(frame) - 4
    assert struct.unpack_from(">hhi", frame, 4) == (1, 4, 9)
    assert struct.pack(">iqi", 0, 12, 1 << 20) in frame and struct.pack(">iqi", 3, 0, 1) in frame
