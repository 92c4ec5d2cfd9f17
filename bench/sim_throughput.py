"""How fast the simulated world runs: requests (slates shown and reacted to) per second, one core.

    python -m bench.sim_throughput [--requests N] [--batch B] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.machine import result
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
        if progress:
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)

    def progress(done: int, total: int) -> None:
        print(f"\rsimulated {done:,}/{total:,} requests", end="", file=sys.stderr, flush=True)

    out = measure(args.requests, args.batch, progress=None if args.json else progress)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        m = out["metrics"]
        print(f"\n{m['requests_per_second']:,.0f} requests/s ({m['shown_items_per_second']:,.0f} shown items/s), "
              f"{m['clicks_per_request']} clicks per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
