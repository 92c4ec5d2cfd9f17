"""Which malloc a role runs on, and jemalloc preloaded into every role where it is installed.

glibc's heaps fragment under the roles' churn: in a 20-minute soak at twice the demo's load
the learner's free space grew +2.0 MB a minute while the bytes in use barely moved (glibc's
``malloc_info``), and in 40-minute soaks the scorer's glibc free space rose 0.3-0.4 MB a
minute with its data level; no trim gives that back. On jemalloc the scorer was level in two
40-minute soaks (+0.01 +- 0.06 and -0.02 +- 0.07 MB/min after 20 minutes) and the learner, join
and replay store sit lower (soaks of 2026-12-03; docs/benchmarks/notes). It costs the scorer's requests nothing
measurable (three runs of ``bench.scorer_latency`` each: in-process p50 for 100 candidates
0.175-0.181 ms on either).

jemalloc is a shared library, so it is chosen when a process starts (``LD_PRELOAD``): the
launchers here (the demo, the soak, the image) set it, and each role reports what it got
as ``recsys_allocator_info``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import GaugeMetricFamily

#: A jemalloc to use instead of searching the usual places.
JEMALLOC_PATH_ENV = "RECSYS_JEMALLOC"
#: Where Debian/Ubuntu (``libjemalloc2``), Fedora and the image put it.
JEMALLOC_CANDIDATES = (
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
CHOICES = ("auto", "jemalloc", "glibc")

ALLOCATOR_INFO = Gauge("recsys_allocator_info", "The malloc this process runs on (1 for the one in use).",
                       ["component", "allocator"])


class AllocatorError(RuntimeError):
    """jemalloc was asked for and is not installed."""


def find_jemalloc(environ: Mapping[str, str] = os.environ, candidates: Iterable[str] | None = None) -> str | None:
    """The path of jemalloc's shared library: ``RECSYS_JEMALLOC`` if set (it must exist), else the
    first of the usual places that exists; None if none does."""
    chosen = environ.get(JEMALLOC_PATH_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise AllocatorError(f"{JEMALLOC_PATH_ENV}={chosen} is not a file")
        return chosen
    return next((path for path in (JEMALLOC_CANDIDATES if candidates is None else candidates)
                 if Path(path).is_file()), None)


def roles_on_jemalloc(choice: str, roles: Iterable[str]) -> frozenset[str]:
    """Which of ``roles`` a launcher preloads with jemalloc for ``--allocator choice``."""
    if choice not in CHOICES:
        raise ValueError(f"allocator must be one of {', '.join(CHOICES)}, not {choice!r}")
    return frozenset() if choice == "glibc" else frozenset(roles)


def preloaded(env: Mapping[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` first in ``LD_PRELOAD`` (once; whatever else was preloaded stays)."""
    others = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    return {**env, "LD_PRELOAD": " ".join([library, *others])}


def library_for(choice: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """jemalloc's path for ``--allocator choice``: None for ``glibc``, and for ``auto`` where it is not
    installed (the roles then run on glibc); ``jemalloc`` without it is an error that says what to install.
    ``auto`` and ``jemalloc`` put every role on it; they differ only there."""
    roles_on_jemalloc(choice, ())
    if choice == "glibc":
        return None
    library = find_jemalloc(environ)
    if library is None and choice == "jemalloc":
        raise AllocatorError("--allocator jemalloc: libjemalloc.so.2 not found (Debian: apt-get install "
                             f"libjemalloc2; or set {JEMALLOC_PATH_ENV} to its path)")
    return library


def launch_env(env: Mapping[str, str], role: str, choice: str, library: str | None) -> dict[str, str]:
    """The environment to start ``role`` in: ``library`` preloaded if ``choice`` puts the role on jemalloc."""
    if library is None or role not in roles_on_jemalloc(choice, [role]):
        return dict(env)
    return preloaded(env, library)


def running_allocator(maps: Path = Path("/proc/self/maps")) -> str:
    """``jemalloc`` if it is mapped into this process, else ``glibc`` (``unknown`` without /proc)."""
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    return "jemalloc" if "libjemalloc" in text else "glibc"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _c_function(library: str | None, name: str, restype, *argtypes):
    """A C function of ``library`` (None: whatever the process has loaded), looked up once: a new
    ``CDLL`` at every scrape would leave a class and its function pointers to the cyclic GC each time.
    None where the library or the symbol is missing."""
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = restype, list(argtypes)
    return function


def glibc_malloc_bytes() -> dict[str, int] | None:
    """glibc's ``mallinfo2``: bytes its malloc hands out (``in_use``: chunks in use plus their own mappings)
    and bytes it holds from the system (``held``: every arena plus those mappings; the difference is
    free space it keeps). None without glibc 2.33+."""
    mallinfo2 = _c_function("libc.so.6", "mallinfo2", _MallInfo2)
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "held": info.arena + info.hblkhd}


def jemalloc_bytes() -> dict[str, int] | None:
    """jemalloc's own statistics (``mallctl``, refreshed by bumping ``epoch``): ``in_use`` is
    ``stats.allocated``, ``held`` is ``stats.resident`` (its physically resident pages, metadata and
    dirty pages not yet purged included). None where jemalloc is not loaded or was built without stats."""
    mallctl = _c_function(None, "mallctl", ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                          ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p, ctypes.c_size_t)
    if mallctl is None:
        return None
    epoch = ctypes.c_uint64(1)
    if mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch)) != 0:
        return None
    out = {}
    for kind, name in (("in_use", b"stats.allocated"), ("held", b"stats.resident")):
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(name, ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
            return None
        out[kind] = value.value
    return out


def pymalloc_bytes() -> dict[str, int] | None:
    """Python's own small-object allocator (objects up to 512 bytes), which takes 1 MiB arenas straight
    from the system, so neither malloc counts them: ``in_use`` is its allocated blocks, ``held`` its
    arenas (an arena goes back only when every block in it is free). Read from the interpreter's
    ``_PyObject_DebugMallocStats`` report (what ``sys._debugmallocstats`` prints; a fraction of a
    millisecond) into memory. None when pymalloc is off (``PYTHONMALLOC=malloc``) or the report changes."""
    open_memstream = _c_function(None, "open_memstream", ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_size_t))
    fclose, free = _c_function(None, "fclose", ctypes.c_int, ctypes.c_void_p), _c_function(None, "free", None,
                                                                                          ctypes.c_void_p)
    report = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)   # PyDLL: keeps the GIL, as pymalloc needs
    if None in (open_memstream, fclose, free, report):
        return None
    report.argtypes, report.restype = [ctypes.c_void_p], ctypes.c_int
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        return None
    try:
        active = report(stream)
    finally:
        fclose(stream)
    text = ctypes.string_at(buffer, size.value).decode("ascii", "replace") if buffer else ""
    free(buffer)
    arenas = re.search(r"^(\d+) arenas \* (\d+) bytes/arena", text, re.M)
    blocks = re.search(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", text, re.M)
    if not active or arenas is None or blocks is None:
        return None
    return {"in_use": int(blocks.group(1).replace(",", "")), "held": int(arenas.group(1)) * int(arenas.group(2))}


class MallocBytes:
    """``recsys_malloc_bytes{component, allocator, kind}``, read from the allocator at each scrape.

    Resident memory alone cannot say whether a role holds more data or its allocator holds more free
    space: the learner's soak rise on glibc was mostly the latter (BENCHMARKS.md, "Soak"). ``in_use``
    is what the program has allocated through malloc (torch's tensors, librdkafka, numpy's buffers);
    ``held`` is what the allocator has from the system for it. Python's small objects live in the
    interpreter's own 1 MiB arenas, outside malloc: they are the ``allocator="pymalloc"`` series.
    """

    def __init__(self, component: str, allocator: str) -> None:
        self.component, self.allocator = component, allocator
        self.read = jemalloc_bytes if allocator == "jemalloc" else glibc_malloc_bytes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("recsys_malloc_bytes", "Bytes the process's malloc hands out (kind=in_use) "
                                   "and holds from the system (kind=held), read at each scrape; "
                                   "allocator=pymalloc: Python's object arenas, outside malloc.",
                                   labels=["component", "allocator", "kind"])
        for allocator, read in ((self.allocator, self.read), ("pymalloc", pymalloc_bytes)):
            for kind, value in (read() or {}).items():
                family.add_metric([self.component, allocator, kind], value)
        yield family


_exported: MallocBytes | None = None


def export_allocator(component: str) -> str:
    """Set ``recsys_allocator_info{component, allocator}``, export ``recsys_malloc_bytes`` (once per
    process) and return the allocator's name."""
    global _exported
    name = running_allocator()
    ALLOCATOR_INFO.labels(component, name).set(1)
    if _exported is None:
        _exported = MallocBytes(component, name)
        REGISTRY.register(_exported)
    return name
