"""Sending dead letters back to the topic they came from, once their cause is fixed.

A message is dead-lettered with its original bytes, so after a fix (a producer that
sent a bad field, a contract that was too strict, impressions that arrived after
their clicks) it can be offered again. Only letters whose bytes now pass their
topic's contract are sent: an invalid one would only be dead-lettered again, so it
is counted as still invalid, with the reason it fails for now. Truncated originals
(over the dead-letter size limit) cannot be rebuilt and are skipped. The bytes go out
unchanged, keyed as the contract keys them. The reward join drops repeated event_ids
within its de-duplication horizon (2 h by default), so a second replay of the same
letters inside it pays nothing twice; items are upserts by item_id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stream import schemas
from stream.config import Settings
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import logical_name, topic_name

#: Topics whose messages come from outside the loop: replaying them is safe and meaningful.
#: Derived topics (experiences, policies, score-responses) are rebuilt by their roles instead.
REPLAYABLE = ("impressions", "clicks", "purchases", "items", "score-requests")


@dataclass
class ReplayReport:
    selected: int = 0
    replayed: Counter = field(default_factory=Counter)        # by (source topic, reason dead-lettered for)
    still_invalid: Counter = field(default_factory=Counter)   # by the reason it fails for now
    skipped: Counter = field(default_factory=Counter)         # truncated, not_replayable
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "replayed": sum(self.replayed.values()),
                "replayed_by_topic_and_reason": {f"{t}/{r}": n for (t, r), n in sorted(self.replayed.items())},
                "still_invalid": dict(self.still_invalid), "skipped": dict(self.skipped), "dry_run": self.dry_run}


def read_dead_letters(settings: Settings) -> list[schemas.DeadLetter]:
    """Every dead letter on the topic now (an undecodable record would be a bug of ours: it raises)."""
    return [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"), "dlq")]


def select(letters: Iterable[schemas.DeadLetter], settings: Settings, reasons: set[str] | None = None,
           topics: set[str] | None = None, since: float | None = None) -> list[schemas.DeadLetter]:
    """Letters matching every filter given (reasons, logical source topics, dead-lettered at or after ``since``)."""
    return [letter for letter in letters
            if (reasons is None or letter.reason in reasons)
            and (topics is None or logical_name(settings, letter.source_topic) in topics)
            and (since is None or letter.ts >= since)]


def replay(settings: Settings, letters: list[schemas.DeadLetter], dry_run: bool = False,
           progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    report = ReplayReport(selected=len(letters), dry_run=dry_run)
    producer = None if dry_run else EventProducer(settings, component="dlq-replay")
    try:
        for done, letter in enumerate(letters, start=1):
            logical = logical_name(settings, letter.source_topic)
            if logical not in REPLAYABLE:
                report.skipped["not_replayable"] += 1
            elif letter.original_truncated:
                report.skipped["truncated"] += 1
            else:
                try:
                    schemas.decode_for_policy(logical, letter.original, settings.user_features)
                except schemas.InvalidMessage as exc:
                    report.still_invalid[exc.reason] += 1
                else:
                    if producer is not None:
                        producer.send_raw(logical, letter.original)
                    report.replayed[(logical, letter.reason)] += 1
            if progress is not None and (done % 1000 == 0 or done == len(letters)):
                progress(done, len(letters))
        if producer is not None:
            producer.flush()
    finally:
        if producer is not None:
            producer.release()
    return report
