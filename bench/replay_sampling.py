"""Replay store speed: durable inserts per second and sampled experiences per second (batches of 1024).

    python -m bench.replay_sampling [--rows N] [--window W] [--reservoir R] [--batch B] [--json]

Inserts are timed over the whole run and again over the batches that come once the store is
full (window plus reservoir), where every batch also evicts; the process's anonymous memory
is read when the store fills and at the end, since a full store must not keep growing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import result
from bench.runner import run_benchmark
from stream import schemas
from stream.ops.memory import resident_parts
from stream.replay.store import ReplayStore, StoreConfig


def _experience(i: int) -> schemas.Experience:
    return schemas.Experience(
        event_id=f"req-{i}:item-{i % 500}:click", request_id=f"req-{i}", user_id=f"user-{i % 5000}",
        action=f"item-{i % 500}", position=i % 5, propensity=0.2, reward=float(i % 3 == 0),
        reward_parts=schemas.RewardParts(click=float(i % 3 == 0)), kind="click", policy_version=1,
        ts=1_763_900_000.0 + i, context=schemas.Context(features=[0.1] * 16))


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def measure(rows: int = 300_000, window: int = 100_000, reservoir: int = 100_000, batch: int = 2000,
            seconds: float = 2.0, progress=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="recsys-replay-bench-") as tmp:
        store = ReplayStore(Path(tmp) / "replay.db", StoreConfig(window=window, reservoir=reservoir))
        started = time.perf_counter()
        full_rows, full_seconds, anon_when_full = 0, 0.0, None
        for start in range(0, rows, batch):
            experiences = [_experience(i) for i in range(start, min(rows, start + batch))]
            full = start >= window + reservoir
            if full and anon_when_full is None:
                anon_when_full = resident_parts(os.getpid()).get("anon")
            began = time.perf_counter()
            store.add(experiences, {("experiences", 0): start + batch})
            if full:
                full_rows += len(experiences)
                full_seconds += time.perf_counter() - began
            if progress and (start // batch) % 25 == 0:
                progress(min(rows, start + batch), rows)
        insert_rate = rows / (time.perf_counter() - started)
        anon_at_end = resident_parts(os.getpid()).get("anon")
        rates = {}
        for how in ("uniform", "recent", "prioritised"):
            count, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                count += len(store.sample(1024, how=how))
            rates[how] = count / (time.perf_counter() - began)
        began = time.perf_counter()
        tasks = store.sample_tasks(64, 20)
        task_seconds = time.perf_counter() - began
        sizes = store.sizes()
        store.close()
    return result(
        "replay_sampling",
        {"inserts_per_second": round(insert_rate, 1),
         # None: the run ended before the store was full.
         "full_store_inserts_per_second": round(full_rows / full_seconds, 1) if full_seconds else None,
         "anon_mb_when_full": _mb(anon_when_full), "anon_mb_at_end": _mb(anon_at_end),
         "uniform_samples_per_second": round(rates["uniform"], 1),
         "recent_samples_per_second": round(rates["recent"], 1),
         "prioritised_samples_per_second": round(rates["prioritised"], 1),
         "tasks_64_users_seconds": round(task_seconds, 4), "task_users_found": len(tasks), **sizes},
        {"rows_inserted": rows, "window": window, "reservoir": reservoir, "insert_batch": batch,
         "sample_batch": 1024, "synchronous": "FULL (WAL)"},
    )


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--rows", type=int, default=300_000)
        parser.add_argument("--window", type=int, default=100_000)
        parser.add_argument("--reservoir", type=int, default=100_000)
        parser.add_argument("--batch", type=int, default=2000, help="experiences per insert (the replay "
                            "service writes what one poll returns: a few hundred at the demo's load)")

    def run(args, say):
        progress = (lambda done, total: say(f"inserted {done:,}/{total:,}")) if say else None
        return measure(args.rows, args.window, args.reservoir, args.batch, progress=progress)

    def summary(out):
        m = out["metrics"]
        when_full = (f" ({m['full_store_inserts_per_second']:,.0f}/s once full; anonymous memory "
                     f"{m['anon_mb_when_full']} -> {m['anon_mb_at_end']} MB)"
                     if m["full_store_inserts_per_second"] else "")
        return (f"{m['inserts_per_second']:,.0f} durable inserts/s{when_full}; samples/s in batches of 1024: uniform "
                f"{m['uniform_samples_per_second']:,.0f}, recent {m['recent_samples_per_second']:,.0f}, "
                f"prioritised {m['prioritised_samples_per_second']:,.0f}; 64 tasks in {m['tasks_64_users_seconds']}s")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
