"""Soak: the closed loop for a long run, every role's resident memory sampled, its slope fitted.

    python -m bench.soak [--duration S] [--rate R] [--sample-every S] [--warmup S] [--late-warmup S]
                         [--score-args "--max-users N ..."] [--log-dir DIR] [--json]

Runs the demo's loop (embedded broker, reward join, replay, learner, scorer as processes;
simulated users at ``--rate`` requests per second) and samples each process's resident
memory every ``--sample-every`` seconds of traffic. After ``--warmup`` seconds (caches,
the dedupe horizon, the replay window filling) a role that holds bounded state should
level off: the fitted slope (MB per minute, least squares) and its standard error say
whether it does. Each role's malloc is sampled too (``recsys_malloc_bytes``: what it hands
out and what it holds, and Python's own object arenas, which malloc does not see), so a
rise can be told apart: more data, or more free space kept by an allocator; and each role's
resident memory is split into anonymous and file-backed pages (code paged in is bounded by
its size). Each slope comes with two standard errors: the textbook one, and one robust to
the minutes-long swings that make neighbouring samples alike (``se_hac``). The embedded
broker keeps every record it is sent (its memory storage applies no retention), so its
slope is the bytes the loop writes to Kafka. Every 5 minutes of traffic get their own
click-to-live figures and each process's CPU use in cores, so a loop whose freshness or
cost per event drifts over a long run shows where; and every minute the record batches,
records and bytes each topic holds are counted (``stream/kafka/batch_census.py``: the
embedded broker's cost follows its batches), so the topic that drives it is named.
"""

from __future__ import annotations

import bisect
import os
import shlex
import threading
import time
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaException

from bench.machine import result
from bench.runner import run_benchmark
from stream.config import Settings
from stream.demo.closed_loop import FRESHNESS_WINDOW_SECONDS, LoopOptions, labelled_series, run_closed_loop, scrape
from stream.kafka.batch_census import BatchCensus, CensusError
from stream.ops.allocator import CHOICES as ALLOCATORS
from stream.ops.memory import cpu_seconds, resident_parts, rss_bytes


def slope(times: list[float], values: list[float]) -> dict[str, float | None]:
    """Least-squares slope of MB against minutes, with two standard errors.

    ``se`` is the textbook one, which assumes each sample's noise independent of the next. Resident
    memory is not like that: a role swings for minutes (a snapshot, a checkpoint, a batch of buffers),
    so neighbouring samples 10 s apart share their error and ``se`` understates the noise. ``se_hac``
    is Newey and West's, which allows for that: Bartlett weights over ``hac_lags`` samples, 1.3 times
    the square root of their count (Lazarus, Lewis, Stock and Watson, 2018).
    """
    t, y = np.asarray(times) / 60.0, np.asarray(values) / 2**20
    if len(t) < 3:
        return {"mb_per_min": None, "se": None, "se_hac": None, "samples": len(t)}
    a = np.vstack([t, np.ones_like(t)]).T
    coef, residuals, *_ = np.linalg.lstsq(a, y, rcond=None)
    dof = len(t) - 2
    sigma2 = float(residuals[0]) / dof if len(residuals) and dof > 0 else 0.0
    se = float(np.sqrt(sigma2 / np.sum((t - t.mean()) ** 2)))
    lags = min(len(t) - 1, int(1.3 * np.sqrt(len(t))))
    return {"mb_per_min": round(float(coef[0]), 3), "se": round(se, 3),
            "se_hac": round(hac_slope_se(a, y - a @ coef, lags, dof), 3), "hac_lags": lags, "samples": len(t),
            "start_mb": round(float(y[0]), 1), "end_mb": round(float(y[-1]), 1)}


def hac_slope_se(design: np.ndarray, residuals: np.ndarray, lags: int, dof: int) -> float:
    """Newey-West standard error of the first coefficient: (X'X)^-1 S (X'X)^-1, with S summing the
    residuals' products up to ``lags`` apart under Bartlett weights, scaled by n / dof."""
    scores = design * residuals[:, None]
    meat = scores.T @ scores
    for lag in range(1, lags + 1):
        cross = scores[lag:].T @ scores[:-lag]
        meat += (1.0 - lag / (lags + 1)) * (cross + cross.T)
    bread = np.linalg.inv(design.T @ design)
    covariance = bread @ meat @ bread * (len(residuals) / dof)
    return float(np.sqrt(max(covariance[0, 0], 0.0)))


def slopes_after(samples: dict[str, list[tuple[float, int]]], start: float) -> dict[str, dict]:
    """Each role's slope fitted to its (seconds, bytes) samples from ``start`` on."""
    kept = {role: [(t, v) for t, v in points if t >= start] for role, points in samples.items()}
    return {role: slope([t for t, _ in pts], [v for _, v in pts]) for role, pts in kept.items()}


def malloc_bytes(metrics_text: str) -> dict[str, float]:
    """``recsys_malloc_bytes`` from a role's /metrics text: its malloc's by kind (``in_use``, ``held``),
    Python's object arenas as ``pymalloc in_use`` and ``pymalloc held``."""
    return {("pymalloc " if labels.get("allocator") == "pymalloc" else "") + labels["kind"]: value
            for labels, value in labelled_series(metrics_text, "recsys_malloc_bytes") if "kind" in labels}


def cores_by_window(samples: dict[str, list[tuple[float, float]]], window: float) -> dict[str, list[list[float]]]:
    """Each process's CPU use in cores over each ``window`` seconds, as [window start, cores], from its
    (seconds, CPU seconds so far) samples. A cost per event that grows over a run shows here, before it
    shows as lag on a machine with cores to spare."""
    out: dict[str, list[list[float]]] = {}
    for role, points in samples.items():
        times = [t for t, _ in points]
        rows = []
        for start in np.arange(0.0, times[-1] if times else 0.0, window):
            i = bisect.bisect_left(times, start)
            j = min(bisect.bisect_left(times, start + window), len(times) - 1)
            (t0, c0), (t1, c1) = points[i], points[j]
            if t1 > t0:
                rows.append([round(float(start), 1), round((c1 - c0) / (t1 - t0), 3)])
        out[role] = rows
    return out


class HeldCensus(threading.Thread):
    """Counts what each of the loop's topics holds every ``every`` seconds, off the traffic's thread."""

    def __init__(self, settings: Settings, started_at: float, every: float = 60.0) -> None:
        super().__init__(name="soak-census", daemon=True)
        self.settings, self.started_at, self.every = settings, started_at, every
        self.done = threading.Event()
        #: [seconds of traffic, {logical topic: [batches, records, MB]}]
        self.samples: list[list] = []
        #: [seconds of traffic, offsets a census left unread]: above 0, that minute's counts are short.
        self.unread: list[list] = []
        self.errors = 0

    def run(self) -> None:
        host, port = self.settings.require_bootstrap("soak").split(",")[0].rsplit(":", 1)
        prefix, t0 = self.settings.topic_prefix, time.monotonic() - self.started_at
        with BatchCensus(host, int(port)) as census:
            while not self.done.wait(self.every):
                try:
                    held = census.update()
                except (OSError, CensusError, KafkaException):
                    self.errors += 1
                    continue
                self.unread.append([round(time.monotonic() - t0, 1), census.unread])
                self.samples.append([round(time.monotonic() - t0, 1), {
                    topic.removeprefix(prefix): [h.batches, h.records, round(h.bytes / 2**20, 2)]
                    for topic, h in sorted(held.items()) if topic.startswith(prefix) and h.batches}])


def measure(duration: float, rate: float, sample_every: float = 10.0, warmup: float = 120.0,
            progress=None, log_dir: Path | None = None, score_args: tuple[str, ...] = (),
            late_warmup: float = 300.0, allocator: str = "auto") -> dict:
    samples: dict[str, list[tuple[float, int]]] = {}
    #: "<role> <kind>" -> (seconds, bytes): what each role's malloc hands out and holds (its /metrics).
    malloc: dict[str, list[tuple[float, int]]] = {}
    #: "<role> <kind>" -> (seconds, bytes): resident memory split into anonymous, file-backed and shared pages.
    parts: dict[str, list[tuple[float, int]]] = {}
    #: process -> (seconds, CPU seconds used so far): every role, the broker and this driver.
    cpu: dict[str, list[tuple[float, float]]] = {}
    last = [-sample_every]
    census: list[HeldCensus] = []

    def sample(seconds: float, roles, settings) -> None:
        if not census:
            census.append(HeldCensus(settings, seconds))
            census[0].start()
        if seconds - last[0] < sample_every:
            return
        last[0] = seconds
        pids = {**{role: proc.pid for role, proc in roles.procs.items()}, "broker": roles.broker_pid}
        for role, pid in pids.items():
            rss = rss_bytes(pid)
            if rss is not None:
                samples.setdefault(role, []).append((seconds, rss))
            used = cpu_seconds(pid)
            if used is not None:
                cpu.setdefault(role, []).append((seconds, used))
            for kind, value in resident_parts(pid).items():
                parts.setdefault(f"{role} {kind}", []).append((seconds, value))
        driver = cpu_seconds(os.getpid())      # the simulated users and their HTTP client share the cores
        if driver is not None:
            cpu.setdefault("driver", []).append((seconds, driver))
        for role, port in roles.metrics.items():
            for kind, value in malloc_bytes(scrape(port)).items():
                malloc.setdefault(f"{role} {kind}", []).append((seconds, int(value)))

    started = time.monotonic()
    report = run_closed_loop(Settings(), LoopOptions(duration=duration, rate=rate, on_second=sample,
                                                     log_dir=log_dir, score_args=score_args,
                                                     allocator=allocator),
                             progress or (lambda line: None))
    for sampler in census:
        sampler.done.set()
        sampler.join(30)
    return result("soak", {
        "slopes_after_warmup": slopes_after(samples, warmup),
        # The learner's held-out decisions and probe sets fill for about 300 s at this load.
        "slopes_after_late_warmup": slopes_after(samples, late_warmup),
        "samples": {role: [(round(t, 1), round(v / 2**20, 1)) for t, v in points] for role, points in samples.items()},
        # Resident memory is anonymous pages (data, free space) plus code and files paged in: split.
        "resident_part_slopes_after_late_warmup": slopes_after(parts, late_warmup),
        "resident_part_samples": {key: [(round(t, 1), round(v / 2**20, 2)) for t, v in points]
                                  for key, points in parts.items()},
        # Resident memory is data plus the allocator's free space: these split it (recsys_malloc_bytes).
        "malloc_slopes_after_late_warmup": slopes_after(malloc, late_warmup),
        "malloc_samples": {key: [(round(t, 1), round(v / 2**20, 2)) for t, v in points]
                           for key, points in malloc.items()},
        "requests": report["requests"], "failed_requests": report["failed_requests"],
        "events_per_second": report["events_per_second"], "exit_codes": report["exit_codes"],
        "click_to_live_p99_s": report["click_to_live_seconds"]["p99"], **report["policy_traffic"],
        "click_to_live_by_window": report["click_to_live_seconds"]["by_window"],
        "cpu_cores_by_window": cores_by_window(cpu, FRESHNESS_WINDOW_SECONDS),
        "offset_gaps": report["offset_gaps"], "allocators": report["allocators"],
        # What the broker holds, counted a minute behind: [seconds, {topic: [batches, records, MB]}].
        "held_by_minute": census[0].samples if census else [],
        "census_errors": census[0].errors if census else 0,
        "census_unread_by_minute": census[0].unread if census else [],
        "seconds": round(time.monotonic() - started, 1),
    }, {"duration_s": duration, "rate_rps": rate, "sample_every_s": sample_every, "warmup_s": warmup,
        "late_warmup_s": late_warmup, "score_args": list(score_args), "allocator": allocator})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--duration", type=float, default=600.0)
        parser.add_argument("--rate", type=float, default=160.0, help="requests/s (the demo's default is 80)")
        parser.add_argument("--sample-every", type=float, default=10.0)
        parser.add_argument("--warmup", type=float, default=120.0)
        parser.add_argument("--late-warmup", type=float, default=300.0,
                            help="a second fit from here (the learner's held-out decisions fill for ~300 s)")
        parser.add_argument("--log-dir", type=Path, default=None, help="keep each role's log here")
        parser.add_argument("--score-args", default="",
                            help="more options for the scorer, as one string (e.g. \"--max-users 1500\": the "
                                 "demo's 2,200 users never reach the default 100,000)")
        parser.add_argument("--allocator", choices=ALLOCATORS, default="auto",
                            help="the roles' malloc, as `recsys-stream demo --allocator` (auto: jemalloc for "
                                 "every role where installed)")

    def summary(out):
        m = out["metrics"]
        late = m["slopes_after_late_warmup"]
        rows = "; ".join(f"{role} {s['mb_per_min']} ± {s['se']} MB/min ({s.get('start_mb')} -> {s.get('end_mb')} MB; "
                         f"after {out['params']['late_warmup_s']:.0f}s {late[role]['mb_per_min']} ± {late[role]['se']}, "
                         f"autocorrelation-robust ± {late[role]['se_hac']})"
                         for role, s in sorted(m["slopes_after_warmup"].items()))
        held = m["held_by_minute"][-1][1] if m["held_by_minute"] else {}
        batches = ", ".join(f"{topic} {figures[0]:,}" for topic, figures in
                            sorted(held.items(), key=lambda item: -item[1][0]))
        return (f"memory slopes after {out['params']['warmup_s']:.0f}s warm-up: {rows}; "
                f"{m['requests']} requests, {m['failed_requests']} failed; policy traffic "
                f"{m['policy_bytes_per_s'] / 1e3:.1f} kB/s; batches held at the end: {batches or 'not counted'}")

    return run_benchmark(__doc__, configure,
                         lambda args, say: measure(args.duration, args.rate, args.sample_every, args.warmup, say,
                                                   args.log_dir, tuple(shlex.split(args.score_args)),
                                                   args.late_warmup, args.allocator),
                         summary, argv)


if __name__ == "__main__":
    raise SystemExit(main())
