"""MovieLens through the real loop: import, backfill, learn and evaluate, period by period, over Kafka.

    python -m bench.movielens_loop --data DIR [--periods 8] [--limit N] [--json]

The offline benchmark (``bench/movielens.py``) feeds the agent in process. This one runs
the product's commands on the embedded broker, as a user with MovieLens logs would:
``recsys-stream import --preset movielens`` one period at a time, ``process
--until-caught-up`` (the join), a ``replay`` service throughout, ``learn
--until-caught-up`` (the learner worker, gate included), and before each period is
learned, ``evaluate --ranking-only`` of the newest version on it: the AUC of each
rating's estimate adapted to the user's earlier ratings, as the scorer adapts. The
per-period AUCs are comparable with the offline benchmark's ``ours`` row (same cut
into equal-count periods, same first-period-only-trains protocol).

Windows: MovieLens has no purchases and a click is its rating, dated 1 s after its
impression; the join runs with 2 s click and purchase windows and 1 s grace, so each
backfill ends event time only 3 s past its period (a longer window would make the next
period's first hour late). Everything the join dead-letters is counted and reported.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import result
from bench.runner import run_benchmark, stop_processes

JOIN_FLAGS = ("--click-window", "2", "--purchase-window", "2", "--grace", "1")


def _cut(data: Path, periods: int, limit: int | None, folder: Path) -> list[tuple[Path, float, float]]:
    """Period files of equal count in time order: (path, first ts, first ts of the next period)."""
    with (data / "ratings.csv").open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    when = header.index("timestamp")
    rows.sort(key=lambda r: int(r[when]))
    rows = rows[:limit] if limit else rows
    bounds = np.linspace(0, len(rows), periods + 1).astype(int)
    out = []
    for k in range(periods):
        part = rows[bounds[k]:bounds[k + 1]]
        path = folder / f"ratings-period{k}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(part)
        end = float(rows[bounds[k + 1]][when]) if k + 1 < periods else float(part[-1][when]) + 1
        out.append((path, float(part[0][when]), end))
    return out


def _run(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "stream", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"recsys-stream {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def measure(data: Path, periods: int = 8, limit: int | None = None, progress=None) -> dict[str, Any]:
    from stream.config import Settings, child_environment
    from stream.kafka.broker import EmbeddedBroker, die_with_parent
    from stream.kafka.snapshot import read_topic
    from stream.kafka.topics import topic_name
    from stream.policy.trust import new_key
    from stream.replay.service import default_store_path
    from stream.replay.store import count_stored

    say = progress or (lambda _m: None)
    if not (data / "ratings.csv").is_file():
        raise FileNotFoundError(f"{data} has no ratings.csv")
    timings: dict[str, float] = {"import": 0.0, "process": 0.0, "replay_wait": 0.0, "learn": 0.0, "evaluate": 0.0}
    per_period: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="recsys-stream-loop-") as tmp:
        folder = Path(tmp)
        cut = _cut(data, periods, limit, folder)
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="ml.", data_dir=folder / "data",
                            hmac_key=new_key(), log_level="WARNING")
        env = child_environment(settings)
        _run(env, "topics", "create")
        replay = subprocess.Popen([sys.executable, "-m", "stream", "replay", "--metrics-port", "0"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        store = default_store_path(settings)
        experiences = 0
        try:
            for k, (path, start, end) in enumerate(cut):
                t = time.monotonic()
                items = ["--items", str(data / "movies.csv")] if k == 0 and (data / "movies.csv").is_file() else []
                imported = json.loads(_run(env, "import", str(path), "--preset", "movielens", "--id-prefix",
                                           f"p{k}", *items, "--json").stdout)
                timings["import"] += time.monotonic() - t
                t = time.monotonic()
                _run(env, "process", "--until-caught-up", *JOIN_FLAGS, "--metrics-port", "0")
                timings["process"] += time.monotonic() - t
                row: dict[str, Any] = {"period": k, "ratings": imported["impressions"],
                                       "positives": imported["clicks"], "dead_lettered_rows": imported["dead_lettered"]}
                if k > 0:     # the newest version judges this period before learning it
                    t = time.monotonic()
                    judged = _run(env, "evaluate", "--ranking-only", "--since", str(start), "--until", str(end),
                                  "--json")
                    timings["evaluate"] += time.monotonic() - t
                    block = json.loads(judged.stdout)["policy"]
                    row.update(version=block["version"], auc=block["ranking"]["auc"],
                               scored=block["ranking"]["scored"])
                experiences = len({json.loads(m.value())["event_id"] for m in read_topic(
                    settings, topic_name(settings, "experiences"), timeout=600)})
                t = time.monotonic()
                deadline = time.monotonic() + 600
                while count_stored(store) < experiences and time.monotonic() < deadline:
                    time.sleep(0.2)
                timings["replay_wait"] += time.monotonic() - t
                t = time.monotonic()
                _run(env, "learn", "--until-caught-up", "--threads", str(os.cpu_count() or 1), "--metrics-port", "0")
                timings["learn"] += time.monotonic() - t
                per_period.append(row)
                say(f"period {k}: {row['ratings']} ratings" + (f", v{row['version']} AUC {row['auc']:.4f}"
                                                               if "auc" in row else " (trains only)"))
            dead = [json.loads(m.value()) for m in read_topic(settings, topic_name(settings, "dlq"), timeout=120)]
        finally:
            stop_processes(replay)
    aucs = [r["auc"] for r in per_period if "auc" in r]
    reasons: dict[str, int] = {}
    for d in dead:
        reasons[f"{d['component']}:{d['reason']}"] = reasons.get(f"{d['component']}:{d['reason']}", 0) + 1
    return result(
        "movielens_loop",
        {"auc_mean": round(float(np.mean(aucs)), 4) if aucs else None,
         "auc_se": round(float(np.std(aucs, ddof=1) / np.sqrt(len(aucs))), 4) if len(aucs) > 1 else None,
         "per_period": per_period, "experiences": experiences, "dead_letters": reasons,
         "seconds": {k: round(v, 1) for k, v in timings.items()}},
        {"data": str(data), "periods": periods, "limit": limit, "join": " ".join(JOIN_FLAGS),
         "broker": "embedded Tansu", "partitions": settings.partitions})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--data", type=Path, required=True, help="A MovieLens folder (ratings.csv, movies.csv).")
        parser.add_argument("--periods", type=int, default=8)
        parser.add_argument("--limit", type=int, default=None, help="Only the first N ratings by time.")

    def summary(out):
        m = out["metrics"]
        rows = ", ".join(f"p{r['period']} {r['auc']:.4f}" for r in m["per_period"] if "auc" in r)
        return (f"MovieLens through the loop: AUC {m['auc_mean']} ± {m['auc_se']} over periods ({rows}); "
                f"{m['experiences']:,} experiences; dead letters {m['dead_letters'] or 'none'}; seconds {m['seconds']}")

    return run_benchmark(__doc__, configure, lambda args, say: measure(args.data, args.periods, args.limit, say),
                         summary, argv)


if __name__ == "__main__":
    sys.exit(main())
