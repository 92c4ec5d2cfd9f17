"""Resident memory and CPU time of a process, from /proc (Linux): what the demo, the soak and the benchmarks
report; and tuning glibc's allocator (capping its arenas, giving its freed memory back to the system)."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Histogram


def _status_bytes(pid: int | None, fields: dict[str, str]) -> dict[str, int]:
    """The ``Name: N kB`` lines of ``/proc/PID/status`` named in ``fields`` (field -> key), in bytes; empty
    where /proc is not there or the process is gone."""
    if pid is None:
        return {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        words = line.split()
        if words and words[0] in fields and len(words) > 1 and words[1].isdigit():
            found[fields[words[0]]] = int(words[1]) * 1024
    return found


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of ``pid`` in bytes; None where /proc is not there or the process is gone."""
    return _status_bytes(pid, {"VmRSS:": "rss"}).get("rss")


#: /proc/PID/status fields that split resident memory: anonymous pages (the process's data, its
#: allocators' free space), file-backed pages (its code and libraries, touched lazily, and mapped
#: files) and shared memory (SQLite's WAL index).
RESIDENT_PARTS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def resident_parts(pid: int | None) -> dict[str, int]:
    """``pid``'s resident bytes by kind (``anon``, ``file``, ``shmem``): a rise in ``file`` is code and
    mapped files paged in, bounded by their size; only ``anon`` can grow with what a process holds.
    Empty where /proc is not there or the process is gone."""
    return _status_bytes(pid, RESIDENT_PARTS)


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
YOUNG_GC_SECONDS = Histogram(
    "recsys_gc_young_seconds", "How long a collection of the garbage collector's young generations took "
    "(the GIL is held meanwhile).", ["component"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))
YOUNG_GC_COLLECTED = Counter(
    "recsys_gc_young_collected_objects", "Unreachable objects (cyclic garbage) freed by those collections.",
    ["component"])


def _glibc() -> ctypes.CDLL | None:
    """glibc, whose allocator the functions below tune; None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


#: ``mallopt``'s parameters: the number of malloc arenas (``M_ARENA_MAX``), the size from which a block
#: gets its own mapping (``M_MMAP_THRESHOLD``), the free space at a heap's top that glibc gives back
#: at once (``M_TRIM_THRESHOLD``).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
#: Free heap top kept once the mmap threshold is fixed: the trimmer gives it back every few seconds instead.
TRIM_THRESHOLD = 64 << 20


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads that allocate from now on, unless ``MALLOC_ARENA_MAX`` is set.

    glibc gives allocating threads up to 8 heaps per core, and each keeps what it freed. The
    learner's threads (torch, librdkafka, the policy follower) spread their churn over many:
    in the 10-minute soak its memory kept creeping after warm-up; with 2 arenas it levelled
    off and gave memory back (BENCHMARKS.md, "Soak"). False where there is no glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def fix_mmap_threshold(size: int) -> bool:
    """Give every block of ``size`` bytes or more its own mapping, returned to the system when freed,
    unless ``MALLOC_MMAP_THRESHOLD_`` is set.

    By default glibc raises this threshold to the size of each mapped block freed (up to 32 MiB),
    so after a policy's first full snapshot the later multi-megabyte blocks (snapshots, decoded
    chunks, a request's item text) land in the heaps and stay there. A fixed threshold stops
    that ratchet; it costs a page-fault round per large block instead. False where there is no glibc.

    Fixing it also ends glibc's dynamic trim threshold, which falls back to 128 KiB: the heap's
    top would then be given back and faulted in again around every large free (the learner's
    updates ran at half speed). It is raised to ``TRIM_THRESHOLD`` (unless ``MALLOC_TRIM_THRESHOLD_``
    is set); the role's ``MallocTrimmer`` gives the rest back.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, size):
        return False
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return True


#: Seconds between a role's rounds of young-garbage collection and malloc_trim (the learner's and the scorer's).
TRIM_SECONDS = 30.0


class MallocTrimmer(threading.Thread):
    """Gives the memory glibc holds freed back to the system every ``every`` seconds (``malloc_trim``).

    glibc keeps what a thread frees in that thread's heap for reuse. A scorer's threads
    (HTTP handlers, librdkafka's, the followers') free far more than they keep, and the
    learner frees tens of MB at each snapshot, gate and checkpoint. In 10-minute soaks
    the scorer sat at 755 MB resident, and at 567-613 MB with a trim every 30 s; the
    learner at 770-880 MB, and about 730 MB with them (BENCHMARKS.md, "Soak"). A trim
    costs milliseconds with the heap locks held; ``recsys_malloc_trim_seconds`` shows how many.

    Each round first collects the garbage collector's young generations. A role tunes the
    collector to run after 50,000 more container allocations than frees
    (``tune_garbage_collector``); in the scorer nearly every allocation is freed by reference
    counting, so that count grows only with cyclic garbage, and safetensors' ctypes views
    (a pointer and its contents per tensor checksummed, ~13 such cycles a second in the
    scorer) then waited about half an hour for a collection, growing Python's heap ~0.4 MB a minute.
    Those views are gone at the source (``models/tensor_bytes.py``); the collection stays
    for whatever cyclic garbage a library leaves next.
    """

    def __init__(self, every: float, stop: threading.Event, component: str) -> None:
        super().__init__(name=f"{component}-malloc-trim", daemon=True)
        self.every, self.stop, self.component = every, stop, component
        libc = _glibc()
        self.trim: Callable[[int], int] | None = libc.malloc_trim if libc is not None else None
        self.trims = 0

    @property
    def available(self) -> bool:
        return self.trim is not None

    def run(self) -> None:
        seconds, released = MALLOC_TRIM_SECONDS.labels(self.component), MALLOC_TRIM_RELEASED.labels(self.component)
        gc_seconds, collected = YOUNG_GC_SECONDS.labels(self.component), YOUNG_GC_COLLECTED.labels(self.component)
        pid = os.getpid()
        while not self.stop.wait(self.every):
            started = time.perf_counter()
            collected.inc(gc.collect(1))
            gc_seconds.observe(time.perf_counter() - started)
            if self.trim is None:       # no glibc: the collection is all there is to do
                continue
            before = rss_bytes(pid) or 0
            started = time.perf_counter()
            self.trim(0)
            seconds.observe(time.perf_counter() - started)
            released.inc(max(0, before - (rss_bytes(pid) or before)))
            self.trims += 1
