"""JSONL file ingestion: every line validated, produced or dead-lettered with its line number."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream.config import Settings
from stream.kafka.producer import DeliveryError, EventProducer
from stream.kafka.topics import topic_name
from stream.ops.metrics import INGEST_LINES

log = logging.getLogger(__name__)

#: Topics that ``recsys-stream ingest`` accepts: the outside world's inputs.
INGESTIBLE = ("clicks", "purchases", "impressions", "items")


@dataclass
class IngestReport:
    path: str
    topic: str
    read: int = 0
    produced: int = 0
    dead_lettered: int = 0
    blank: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    delivery_failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events_per_second"] = round(self.read / self.seconds, 1) if self.seconds else None
        return out


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, bytes read so far, line without its newline)."""
    offset = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            offset += len(line)
            yield number, offset, line.rstrip(b"\r\n")


def ingest_file(
    settings: Settings,
    path: Path,
    logical: str,
    progress: Callable[[int], None] | None = None,  # called with bytes read so far
    producer: EventProducer | None = None,
) -> IngestReport:
    """Validate and produce every line of a JSONL file; invalid lines go to the DLQ with their line number.

    Delivery failures do not raise: they are listed in the report, which the caller
    turns into a non-zero exit.
    """
    if logical not in INGESTIBLE:
        raise ValueError(f"cannot ingest into {logical!r}; choose one of {', '.join(INGESTIBLE)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    own = producer is None
    out = producer or EventProducer(settings, component="ingest")
    report = IngestReport(path=str(path), topic=topic_name(settings, logical))
    started = time.monotonic()
    try:
        offset = 0
        for number, offset, raw in _lines(path):
            if not raw.strip():
                report.blank += 1
                INGEST_LINES.labels(topic=logical, status="blank").inc()
                continue
            report.read += 1
            reason = out.send_raw(logical, raw, line=number)
            if reason is None:
                report.produced += 1
                INGEST_LINES.labels(topic=logical, status="produced").inc()
            else:
                report.dead_lettered += 1
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
                INGEST_LINES.labels(topic=logical, status="dead_lettered").inc()
            if progress is not None and number % 1000 == 0:
                progress(offset)
        if progress is not None:
            progress(offset)
        try:
            out.flush()
        except DeliveryError as exc:
            report.delivery_failures = exc.failures or [str(exc)]
    finally:
        report.seconds = time.monotonic() - started
        if own:
            out.release()
    return report
