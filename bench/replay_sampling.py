"""Replay store speed: durable inserts per second and sampled experiences per second (batches of 1024).

    python -m bench.replay_sampling [--rows N] [--window W] [--reservoir R] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.machine import result
from bench.runner import run_benchmark
from stream import schemas
from stream.replay.store import ReplayStore, StoreConfig


def _experience(i: int) -> schemas.Experience:
    return schemas.Experience(
        event_id=f"req-{i}:item-{i % 500}:click", request_id=f"req-{i}", user_id=f"user-{i % 5000}",
        action=f"item-{i % 500}", position=i % 5, propensity=0.2, reward=float(i % 3 == 0),
        reward_parts=schemas.RewardParts(click=float(i % 3 == 0)), kind="click", policy_version=1,
        ts=1_763_900_000.0 + i, context=schemas.Context(features=[0.1] * 16))


def measure(rows: int = 300_000, window: int = 100_000, reservoir: int = 100_000, batch: int = 2000,
            seconds: float = 2.0, progress=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="recsys-replay-bench-") as tmp:
        store = ReplayStore(Path(tmp) / "replay.db", StoreConfig(window=window, reservoir=reservoir))
        started = time.perf_counter()
        for start in range(0, rows, batch):
            store.add([_experience(i) for i in range(start, min(rows, start + batch))],
                      {("experiences", 0): start + batch})
            if progress and (start // batch) % 25 == 0:
                progress(min(rows, start + batch), rows)
        insert_rate = rows / (time.perf_counter() - started)
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

    def run(args, say):
        progress = (lambda done, total: say(f"inserted {done:,}/{total:,}")) if say else None
        return measure(args.rows, args.window, args.reservoir, progress=progress)

    def summary(out):
        m = out["metrics"]
        return (f"{m['inserts_per_second']:,.0f} durable inserts/s; samples/s in batches of 1024: uniform "
                f"{m['uniform_samples_per_second']:,.0f}, recent {m['recent_samples_per_second']:,.0f}, "
                f"prioritised {m['prioritised_samples_per_second']:,.0f}; 64 tasks in {m['tasks_64_users_seconds']}s")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
