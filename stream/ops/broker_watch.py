"""The embedded broker seen from outside: its memory and CPU, and a warning before it slows the loop.

Tansu 0.6.0's memory storage keeps every record it is sent: it applies no retention, and
a ``DeleteRecords`` request makes it close the connection (tried on the shipped binary,
2026-12-07). Its CPU grows with what a topic holds, because it serves fetches, commits
and ``ListOffsets`` at a cost that grows with a partition's batches. At twice the demo's
load the soak saw it pass half a core after about 30 minutes and the loop slow from
about 40 (BENCHMARKS.md, Soak). None of that can be fixed from outside the binary, so
``recsys-stream broker`` exports the process's resident memory and CPU and says, with
the figures, when either passes the level at which the loop is about to suffer. It also
counts the record batches each topic holds (``stream/kafka/batch_census.py``), the figure
the broker's cost follows, so a warning can say which topic to move or batch better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from stream.kafka.batch_census import Held
from stream.ops.memory import cpu_seconds, rss_bytes

BROKER_RESIDENT = Gauge("recsys_broker_resident_bytes",
                        "Resident memory of the embedded broker's process (it keeps every record it is sent).")
BROKER_CPU = Gauge("recsys_broker_cpu_cores",
                   "CPU the embedded broker's process used over the last sampling window, in cores.")
BROKER_UPTIME = Gauge("recsys_broker_uptime_seconds", "Seconds since the embedded broker started.")
BROKER_BATCHES = Gauge("recsys_broker_held_batches",
                       "Record batches the embedded broker holds, by topic (its fetch cost and memory follow them; "
                       "counted up to a census interval ago).", ["topic"])
BROKER_RECORDS = Gauge("recsys_broker_held_records", "Records the embedded broker holds, by topic.", ["topic"])
BROKER_BYTES = Gauge("recsys_broker_held_bytes", "Bytes of record batches the embedded broker holds, by topic.",
                     ["topic"])
BROKER_CENSUS_UNREAD = Gauge("recsys_broker_census_unread_offsets",
                              "Offsets the last batch census was due to read but left to the next (its time "
                              "budget ran out); the held_* figures undercount while this is above 0.")
BROKER_CENSUS_ERRORS = Counter("recsys_broker_census_errors_total",
                               "Batch censuses that failed (the broker did not answer, or answered what could "
                               "not be read); the held_* figures are then a census older.")
BROKER_WARNINGS = Counter("recsys_broker_warnings_total",
                          "Warnings that the embedded broker nears the load at which the loop slows, by what.",
                          ["reason"])


@dataclass(frozen=True)
class WatchLevels:
    #: CPU over a window, in cores, from which the broker is warned about (the soak slowed from ~0.6).
    cpu_cores: float = 0.5
    #: Resident memory from which the broker is warned about.
    resident_bytes: int = 2 * 2**30
    #: Seconds a CPU share is measured over; and between two warnings of the same kind.
    window: float = 60.0
    repeat: float = 600.0


class BrokerWatch:
    """Samples one broker process; ``sample`` returns the warnings due now (each kind at most once per
    ``repeat`` seconds while it lasts)."""

    def __init__(self, pid: int, levels: WatchLevels | None = None, now: float | None = None) -> None:
        self.pid, self.levels = pid, levels or WatchLevels()
        self.started = time.monotonic() if now is None else now
        self._window_start, self._window_cpu = self.started, cpu_seconds(pid) or 0.0
        self._warned: dict[str, float] = {}
        self._held: dict[str, Held] = {}

    def observe_census(self, held: dict[str, Held], unread: int = 0) -> None:
        """Exports a census's totals and keeps them for the warnings' text."""
        BROKER_CENSUS_UNREAD.set(unread)
        for topic in set(self._held) - set(held):
            for gauge in (BROKER_BATCHES, BROKER_RECORDS, BROKER_BYTES):
                gauge.remove(topic)
        for topic, figures in held.items():
            BROKER_BATCHES.labels(topic).set(figures.batches)
            BROKER_RECORDS.labels(topic).set(figures.records)
            BROKER_BYTES.labels(topic).set(figures.bytes)
        self._held = {topic: Held(f.batches, f.records, f.bytes) for topic, f in held.items()}

    def holding(self) -> str:
        """'; it holds N batches (most: topic n, topic m)', or '' before the first census."""
        total = sum(f.batches for f in self._held.values())
        if not total:
            return ""
        top = sorted(self._held.items(), key=lambda item: -item[1].batches)[:3]
        return f"; it holds {total:,} batches (most: " + ", ".join(
            f"{topic} {f.batches:,}" for topic, f in top if f.batches) + ")"

    def sample(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        levels, warnings = self.levels, []
        resident, used = rss_bytes(self.pid), cpu_seconds(self.pid)
        BROKER_UPTIME.set(now - self.started)
        if resident is not None:
            BROKER_RESIDENT.set(resident)
        minutes = (now - self.started) / 60
        if resident is not None and resident >= levels.resident_bytes:
            warnings += self._due("memory", now, f"the embedded broker holds {resident / 2**20:,.0f} MB after "
                                  f"{minutes:.0f} min (it keeps every record; level {levels.resident_bytes / 2**20:,.0f} "
                                  f"MB){self.holding()}: move anything longer than a trial to a real Kafka (RECSYS_BOOTSTRAP_SERVERS)")
        if used is not None and now - self._window_start >= levels.window:
            cores = (used - self._window_cpu) / (now - self._window_start)
            BROKER_CPU.set(cores)
            self._window_start, self._window_cpu = now, used
            if cores >= levels.cpu_cores:
                warnings += self._due("cpu", now, f"the embedded broker used {cores:.2f} cores over the last "
                                      f"{levels.window:.0f} s after {minutes:.0f} min (level {levels.cpu_cores:.2f}; its "
                                      "cost grows with the batches a topic holds, and the loop slows as it nears a "
                                      f"core){self.holding()}: move to a real Kafka (RECSYS_BOOTSTRAP_SERVERS)")
        return warnings

    def _due(self, reason: str, now: float, text: str) -> list[str]:
        last = self._warned.get(reason)
        if last is not None and now - last < self.levels.repeat:
            return []
        self._warned[reason] = now
        BROKER_WARNINGS.labels(reason).inc()
        return [text]
