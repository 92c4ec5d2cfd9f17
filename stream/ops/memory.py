"""Resident memory and CPU time of a process, from /proc (Linux): what the demo, the soak and the benchmarks
report; and giving glibc's freed memory back to the system."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Histogram


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of ``pid`` in bytes; None where /proc is not there or the process is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used (all its threads); None where /proc is not there."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


MALLOC_TRIM_SECONDS = Histogram(
    "recsys_malloc_trim_seconds", "How long one malloc_trim took (it holds glibc's heap locks meanwhile).",
    ["component"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
MALLOC_TRIM_RELEASED = Counter(
    "recsys_malloc_trim_released_bytes", "Resident memory given back to the system by malloc_trim.", ["component"])


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):       # not glibc (musl, macOS): nothing to trim
        return None


class MallocTrimmer(threading.Thread):
    """Gives the memory glibc holds freed back to the system every ``every`` seconds (``malloc_trim``).

    glibc keeps what a thread frees in that thread's heap for reuse. A scorer's threads
    (HTTP handlers, librdkafka's, the followers') free far more than they keep. In
    10-minute soaks the scorer sat at 755 MB resident, and at 567-613 MB with a trim every
    30 s (BENCHMARKS.md, "Soak"). A trim costs milliseconds with the heap locks held;
    ``recsys_malloc_trim_seconds`` shows how many.
    """

    def __init__(self, every: float, stop: threading.Event, component: str) -> None:
        super().__init__(name=f"{component}-malloc-trim", daemon=True)
        self.every, self.stop, self.component = every, stop, component
        self.trim = _libc_trim()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self.trim is not None

    def run(self) -> None:
        if self.trim is None:
            return
        seconds, released = MALLOC_TRIM_SECONDS.labels(self.component), MALLOC_TRIM_RELEASED.labels(self.component)
        pid = os.getpid()
        while not self.stop.wait(self.every):
            before = rss_bytes(pid) or 0
            started = time.perf_counter()
            self.trim(0)
            seconds.observe(time.perf_counter() - started)
            released.inc(max(0, before - (rss_bytes(pid) or before)))
            self.trims += 1
