"""How fast the simulated world runs: requests (slates shown and reacted to) per second, one core.

    python -m bench.sim_throughput [--requests N] [--batch B] [--json]
"""

from __future__ import annotations

import sys
import time

from bench.machine import result
from bench.runner import run_benchmark
from sim.world import World, WorldConfig


def measure(requests: int = 500_000, batch: int = 10_000, candidates: int = 20, slate_size: int = 5,
            seed: int = 0, progress=None) -> dict:
    world = World(WorldConfig(seed=seed, new_users=2000, new_items=100, horizon=requests))
    done = 0
    clicks = 0
    started = time.perf_counter()
    while done < requests:
        n = min(batch, requests - done)
        users = world.sample_users(n)
        slates = world.candidates(n, candidates)[:, :slate_size]
        clicks += int(world.feedback(users, slates).clicks.sum())
        done += n
        if progress and done % (batch * 10) == 0:
            progress(done, requests)
    seconds = time.perf_counter() - started
    return result(
        "sim_throughput",
        {
            "requests_per_second": round(done / seconds, 1),
            "shown_items_per_second": round(done * slate_size / seconds, 1),
            "clicks_per_request": round(clicks / done, 4),
            "seconds": round(seconds, 3),
        },
        {"requests": requests, "batch": batch, "candidates": candidates, "slate_size": slate_size,
         "seed": seed, "threads": "numpy default"},
    )


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--requests", type=int, default=500_000)
        parser.add_argument("--batch", type=int, default=10_000)

    def run(args, say):
        progress = (lambda done, total: say(f"simulated {done:,}/{total:,} requests")) if say else None
        return measure(args.requests, args.batch, progress=progress)

    def summary(out):
        m = out["metrics"]
        return (f"{m['requests_per_second']:,.0f} requests/s ({m['shown_items_per_second']:,.0f} shown items/s), "
                f"{m['clicks_per_request']} clicks per request")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
