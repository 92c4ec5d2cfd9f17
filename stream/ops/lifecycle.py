"""One shape for every long-running role: check the cluster, ensure topics, serve metrics, build, run, stop.

``process``, ``replay``, ``learn`` and ``score`` each used to repeat these steps, and the
copies drifted (one checked the bootstrap setting instead of reaching the cluster, one
created the topics twice). A role is anything with ``run()`` (blocks until it is done or
stopped) and ``stop()`` (safe to call from a signal handler: it only asks). ``run_role``
does the rest in one order for all of them, the way quix-streams' ``Application.run``
gives every app the same shape.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaException

from stream.config import MissingBootstrapError, Settings
from stream.kafka.clients import make_admin
from stream.kafka.topics import TopicError, ensure_topics
from stream.ops.allocator import export_allocator
from stream.ops.metrics import serve_metrics

log = logging.getLogger(__name__)


class Role(Protocol):
    def run(self) -> None:
        """Work until done or until ``stop()`` was called."""

    def stop(self) -> None:
        """Ask ``run()`` to finish its current step and return (never blocks)."""


class RoleStartError(RuntimeError):
    """A role could not start; ``exit_code`` is 2 for missing configuration, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reachable_admin(settings: Settings, name: str):
    """An admin client that has proven it can reach the cluster (one metadata round trip)."""
    try:
        admin = make_admin(settings, name)
        admin.list_topics(timeout=10)
    except MissingBootstrapError as exc:
        raise RoleStartError(str(exc), 2) from exc
    except KafkaException as exc:
        raise RoleStartError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc.args[0].str()}") from exc
    return admin


#: Exit status of a role that was asked to stop and did not within its grace (``StopDeadline``).
STOP_OVERDUE_EXIT = 3


class StopDeadline:
    """Once armed by a stop signal, ends the process after ``grace`` seconds if ``run()`` has not returned.

    A role's last step can wait on the broker: a flush, a synchronous commit, a consumer's
    close leaving its group. With the broker gone those waits are long or endless, and a
    worker that ignores SIGTERM is killed later by its supervisor with nothing logged. Every
    role's state is durable up to its last checkpoint (a restart reads the rest again), so
    exiting at the deadline loses nothing that a crash would not.
    """

    def __init__(self, name: str, grace: float, exit_now: Callable[[int], None] = os._exit) -> None:
        self.name, self.grace, self._exit_now = name, grace, exit_now
        self._armed = threading.Event()

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    def arm(self) -> None:
        """Start the countdown (once; later signals do not extend it)."""
        if self._armed.is_set():
            return
        self._armed.set()
        threading.Thread(target=self._expire, name=f"{self.name}-stop-deadline", daemon=True).start()

    def _expire(self) -> None:
        time.sleep(self.grace)
        log.error("%s: not stopped %.0fs after the signal (a broker that is gone can hold a flush, a commit or "
                  "a consumer's close): exiting with status %d; what the last checkpoint did not cover is read "
                  "again on restart", self.name, self.grace, STOP_OVERDUE_EXIT)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit_now(STOP_OVERDUE_EXIT)


def stop_on_signals(stop: Callable[[], None], deadline: StopDeadline | None = None) -> None:
    """SIGTERM and SIGINT ask the role to finish its current step, then stop (graceful shutdown), and
    arm ``deadline``, which ends the process if that takes longer than its grace.

    Python runs a signal's handler in the main thread, the next time that thread runs Python code.
    Linux may deliver a SIGTERM sent to the process to any of its threads, and a main thread
    waiting on a lock (the scorer waits for ``stop()`` on an event) is then not woken: the
    handler did not run for 15 s with the broker gone. So the signal is also read from a
    wakeup pipe, which the interpreter's C-level handler writes on whichever thread took it,
    by a thread of its own that asks the role to stop at once.
    """
    asked = threading.Lock()
    done: list[int] = []

    def request(signum: int) -> None:
        with asked:
            if done:
                return
            done.append(signum)
        log.info("received signal %d, stopping after the current step%s", signum,
                 f" (at most {deadline.grace:g}s)" if deadline is not None else "")
        stop()
        if deadline is not None:
            deadline.arm()

    signal.signal(signal.SIGTERM, lambda signum, _frame: request(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: request(signum))
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch_signals, args=(read_end, request), name="stop-signals", daemon=True).start()


def _watch_signals(read_end: int, request: Callable[[int], None]) -> None:
    """Call ``request`` for each SIGTERM or SIGINT the wakeup pipe reports."""
    while True:
        for signum in os.read(read_end, 64):
            if signum in (signal.SIGTERM, signal.SIGINT):
                request(signum)


#: Container allocations beyond frees between young-generation collections (CPython's default is 700). A
#: role allocates a few objects per message and holds many long-lived ones (join state, the replay index):
#: at the default, collections that find nothing to free took about a third of the join worker's time.
#: Where nearly everything is freed by reference counting the count grows slowly, so the scorer and the
#: learner also collect the young generations on a clock (``stream/ops/memory.py:MallocTrimmer``).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect less often, and never rescan what start-up built (modules, models, clients)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def run_role(name: str, settings: Settings, build: Callable[[Settings], Role], *,
             metrics_port: int | None = None, serve_own_metrics: bool = True,
             handle_signals: bool = True) -> Role:
    """Start ``name`` the one way every role starts, run it to the end, and return it.

    The order matters: the cluster is checked and the topics exist before the role
    builds its clients, and ``/metrics`` is up before the role's first message.
    ``serve_own_metrics=False`` is for a role that serves ``/metrics`` on its own port (the
    scorer); ``handle_signals=False`` for engines that install their own handlers (faust, which
    arms its own ``StopDeadline``).
    """
    admin = reachable_admin(settings, name)
    try:
        ensure_topics(admin, settings)
    except TopicError as exc:
        raise RoleStartError(str(exc)) from exc
    if serve_own_metrics:
        bound = serve_metrics(metrics_port if metrics_port is not None else settings.metrics_port)
        log.info("%s: metrics on http://127.0.0.1:%d/metrics", name, bound)
    role = build(settings)
    if handle_signals:
        stop_on_signals(role.stop, StopDeadline(name, settings.stop_grace_seconds))
    tune_garbage_collector()
    log.info("%s: running (malloc: %s)", name, export_allocator(name))
    role.run()
    log.info("%s: stopped", name)
    return role
