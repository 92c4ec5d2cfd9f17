"""Which malloc a role runs on, and jemalloc preloaded for the roles that hold state for hours.

glibc's main heap fragments under the learner's churn: in a 20-minute soak at twice the
demo's load its free space grew +2.0 MB a minute while the bytes in use barely moved
(glibc's ``malloc_info``), and no trim gives that back. With jemalloc the learner sat
lower in both 20-minute runs, and its, the join's and the replay store's slopes were within
noise or near it in one of them (BENCHMARKS.md, "Soak", session 18). The scorer stays on
glibc unless asked: jemalloc cost it 0.04-0.09 ms at the median on requests of 100
candidates in process, and its slope is within noise on glibc in most runs.

jemalloc is a shared library, so it is chosen when a process starts (``LD_PRELOAD``): the
launchers here (the demo, the soak, the image) set it, and each role reports what it got
as ``recsys_allocator_info``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import Gauge

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
#: Roles without a per-request latency budget, preloaded with jemalloc by ``auto``.
STATEFUL_ROLES = frozenset({"process", "replay", "learn"})
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
    roles = frozenset(roles)
    return {"auto": roles & STATEFUL_ROLES, "jemalloc": roles, "glibc": frozenset()}[choice]


def preloaded(env: Mapping[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` first in ``LD_PRELOAD`` (once; whatever else was preloaded stays)."""
    others = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    return {**env, "LD_PRELOAD": " ".join([library, *others])}


def library_for(choice: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """jemalloc's path for ``--allocator choice``: None for ``glibc``, and for ``auto`` where it is not
    installed (the roles then run on glibc); ``jemalloc`` without it is an error that says what to install."""
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


def export_allocator(component: str) -> str:
    """Set ``recsys_allocator_info{component, allocator}`` and return the allocator's name."""
    name = running_allocator()
    ALLOCATOR_INFO.labels(component, name).set(1)
    return name
