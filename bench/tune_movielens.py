"""Tune a baseline of ``bench movielens`` on data the reported runs do not judge it on.

    python -m bench.tune_movielens --data DIR --row sasrec --grid '{"dim": [32, 64], "epochs": [2, 3]}'
        [--limit 35000] [--periods 8] [--seed 1] [--json]

Every combination of the grid runs the bench's own protocol (``run_policy``: same periods, hold-out
and metrics) on the first ``--limit`` ratings (default: the first half of the shared 70%, where ours was
tuned too), and the settings with the best mean next-period AUC are reported. Settings the grid leaves out
stay at the constructor's defaults. Chosen settings go into ``bench.movielens.TUNED``, which the reported
benchmark runs the whole stream with (``docs/benchmarks/notes/2026-12-07-library-tuning.md``).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import result
from bench.runner import run_benchmark


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError('--grid must be a JSON object of non-empty lists, e.g. {"dim": [32, 64]}')
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def measure(data_dir: Path, row: str, grid: dict[str, list[Any]], limit: int, periods: int, seed: int,
            progress=None) -> dict[str, Any]:
    from bench.movielens import TUNABLE, check_settings, encode, load, run_policy, split, summarise
    from models.agent import AgentConfig

    say = progress or (lambda line: None)
    if row not in TUNABLE:
        raise ValueError(f"--row {row!r} cannot be tuned; choose from {', '.join(TUNABLE)}")
    tried = combinations(grid)
    check_settings(row, grid)
    data = load(data_dir, AgentConfig().history, limit)
    text = encode(data.item_texts, say)
    train, holdout = split(data, periods, seed)
    trials = []
    for n, settings in enumerate(tried, start=1):
        say(f"{row} {n}/{len(tried)}: {settings}")
        started = time.perf_counter()
        summary = summarise(run_policy(row, data, text, train, holdout, seed, say, settings))
        trials.append({"settings": settings, **summary, "seconds": time.perf_counter() - started})
        say(f"  mean AUC {summary['mean_auc']:.4f}, {trials[-1]['seconds']:.0f}s")
    best = max(trials, key=lambda t: t["mean_auc"])
    return result("tune_movielens", {"best": best["settings"], "best_mean_auc": best["mean_auc"], "trials": trials},
                  {"data": str(data_dir), "row": row, "grid": grid, "limit": limit, "ratings": len(data),
                   "periods": periods, "seed": seed})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--data", type=Path, required=True, help="a MovieLens folder (ratings.csv, movies.csv)")
        parser.add_argument("--row", required=True, help="the baseline to tune")
        parser.add_argument("--grid", type=json.loads, required=True, help="JSON: setting -> list of values")
        parser.add_argument("--limit", type=int, default=35_000,
                            help="the first N ratings only (35000: the first half of the shared 70%%)")
        parser.add_argument("--periods", type=int, default=8)
        parser.add_argument("--seed", type=int, default=1)

    def run(args, say):
        return measure(args.data, args.row, args.grid, args.limit, args.periods, args.seed, say)

    def summary(out):
        m = out["metrics"]
        lines = [f"{t['mean_auc']:.4f}  {t['seconds']:5.0f}s  {t['settings']}"
                 for t in sorted(m["trials"], key=lambda t: -t["mean_auc"])]
        return "\n".join([f"best for {out['params']['row']}: {m['best']} (mean AUC {m['best_mean_auc']:.4f})",
                          *lines])

    try:
        return run_benchmark(__doc__, configure, run, summary, argv)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
