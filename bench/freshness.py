"""Freshness: from a click to a scorer serving a policy version trained on it, on the full loop.

    python -m bench.freshness [--duration S] [--rate R] [--publish-seconds P] [--full-every N] [--json]

Runs the demo's closed loop (embedded broker; reward join, replay, learner and scorer
as separate processes; simulated users scoring over HTTP and clicking) and reports, per
click, the delay to the first served version whose newest trained click is at least
as new, plus the per-version delay from its newest trained click to being served.
"""

from __future__ import annotations

from bench.machine import result
from bench.runner import run_benchmark
from stream.config import Settings
from stream.demo.closed_loop import LoopOptions, run_closed_loop


def measure(duration: float, rate: float, publish_seconds: float, progress=None, full_every: int = 100) -> dict:
    report = run_closed_loop(Settings(), LoopOptions(duration=duration, rate=rate, publish_seconds=publish_seconds,
                                                     full_every=full_every), progress or (lambda line: None))
    clicks, versions = report["click_to_live_seconds"], report["freshness_seconds"]
    return result("freshness", {
        "click_to_live_p50_s": clicks["p50"], "click_to_live_p99_s": clicks["p99"], "clicks": clicks["clicks"],
        "clicks_not_live_at_end": clicks["not_live_at_end"],
        "newest_click_to_live_p50_s": versions["p50"], "newest_click_to_live_p99_s": versions["p99"],
        "versions_published": len(report["versions_published"]), "versions_served": len(report["versions_served"]),
        "failed_requests": report["failed_requests"], "requests": report["requests"],
        "experience_to_update_p50_s_at_most": report["experience_to_update_seconds"].get("p50_at_most"),
        "experience_to_update_p99_s_at_most": report["experience_to_update_seconds"].get("p99_at_most"),
        "event_to_update_p50_s_at_most": report["event_to_update_seconds"].get("p50_at_most"),
        "event_to_update_p99_s_at_most": report["event_to_update_seconds"].get("p99_at_most"),
        **report["policy_traffic"], "memory_mb": report.get("memory_mb", {}),
        "stage_seconds": report.get("stage_seconds", {}),
    }, {"duration_s": duration, "rate_rps": rate, "publish_seconds": publish_seconds, "full_every": full_every})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--duration", type=float, default=60.0)
        parser.add_argument("--rate", type=float, default=80.0)
        parser.add_argument("--publish-seconds", type=float, default=1.0)
        parser.add_argument("--full-every", type=int, default=100,
                            help="a full policy snapshot every N versions (1: all full, as before deltas)")

    def run(args, say):
        return measure(args.duration, args.rate, args.publish_seconds, say, args.full_every)

    def summary(out):
        m = out["metrics"]
        return (f"click -> live policy p50 {m['click_to_live_p50_s']:.2f}s p99 {m['click_to_live_p99_s']:.2f}s over "
                f"{m['clicks']} clicks; {m['versions_published']} versions in {out['params']['duration_s']:.0f}s "
                f"(publish every {out['params']['publish_seconds']}s); read by the learner -> first update p50 <= "
                f"{m['experience_to_update_p50_s_at_most']}s, p99 <= {m['experience_to_update_p99_s_at_most']}s; "
                f"{m['failed_requests']} failed requests; policy traffic {m['policy_bytes_per_s'] / 1e3:.1f} kB/s "
                f"(full snapshot {m['full_snapshot_bytes']} B, deltas p50 {m['delta_bytes_p50']} B, "
                f"p99 {m['delta_bytes_p99']} B)")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    raise SystemExit(main())
