"""Reading record batches out of Fetch v4 answers: whole batches counted, partial ones left for the next
read, anything that is not a v2 batch or a well-formed answer refused with a clear error."""

from __future__ import annotations

import struct

import pytest

from stream.kafka.batch_census import (
    Batch,
    BatchCensus,
    CensusError,
    PartitionAnswer,
    batches_in,
    fetch_request,
    parse_fetch_response,
)


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


class TansuLike(BatchCensus):
    """The census's reading logic against partitions held in memory and answered as Tansu 0.6.0 does:
    every batch from the requested offset on, one byte budget spent on a request's partitions in order
    (each partition's own budget ignored), the high watermark always."""

    def __init__(self, logs: dict[tuple[str, int], list[Batch]], budget: int = 5000, **kwargs) -> None:
        super().__init__("127.0.0.1", 9, **kwargs)
        self.logs, self.budget, self.requests = logs, budget, 0
        self.given_out: dict[tuple[str, int], int] = {}     # offsets handed to producers beyond what is stored

    def high(self, tp: tuple[str, int]) -> int:
        return max(self.given_out.get(tp, 0), max((b.next_offset for b in self.logs[tp]), default=0))

    def _fetch(self, wanted):
        self.requests += 1
        left, answers = self.budget, {}
        for tp in sorted(wanted):
            out = []
            for b in self.logs[tp]:
                if b.base_offset < self._cursor[tp] or left <= 0:
                    continue
                out.append(b)
                left -= b.size
            answers[tp] = PartitionAnswer(0, self.high(tp), out)
        return answers


def run_of(start: int, count: int, records: int = 4, size: int = 1000) -> list[Batch]:
    return [Batch(start + i * records, records, size) for i in range(count)]


def test_a_busy_partition_does_not_starve_the_others_of_a_census():
    # "a" has 40 kB to read, eight times the budget of one answer; "b" comes after it in every request.
    census = TansuLike({("a", 0): run_of(0, 40), ("b", 0): run_of(0, 3)})
    census.update({"a": 1, "b": 1})                      # learns the ends
    held = census.update({"a": 1, "b": 1})
    assert (held["a"].batches, held["b"].batches, census.unread) == (40, 3, 0)


def test_offsets_given_out_but_never_stored_do_not_hold_the_census_back():
    # Offsets 40-47 went to a producer whose batch never arrived; the first census saw the end at 48.
    logs = {("t", 0): run_of(0, 10)}
    census = TansuLike(logs)
    census.given_out[("t", 0)] = 48
    census.update({"t": 1})
    logs[("t", 0)] += run_of(48, 2)
    assert census.update({"t": 1})["t"].batches == 10
    assert census._cursor[("t", 0)] == 48 and census.unread == 0     # stepped over 40-47, not stuck on them
    assert census.update({"t": 1})["t"].batches == 12


def test_what_a_census_cannot_read_in_its_time_is_said_and_read_by_the_next():
    census = TansuLike({("t", 0): run_of(0, 50)}, budget_s=0.0)
    census.update({"t": 1})
    held = census.update({"t": 1})
    assert held["t"].batches == 5 and census.unread == 180        # one answer's budget, then time was up
    census.budget_s = 20.0
    assert census.update({"t": 1})["t"].batches == 50 and census.unread == 0
