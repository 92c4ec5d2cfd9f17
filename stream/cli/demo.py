"""``recsys-stream demo``: the closed loop live (or the foundation walkthrough)."""

from __future__ import annotations

from pathlib import Path

import click

from stream.cli.common import VARIANTS, emit_json, fail, load_settings, setup_logging
from stream.config import Settings
from stream.ops.allocator import CHOICES as ALLOCATORS


@click.command()
@click.option("--duration", type=click.FloatRange(min=5), default=150.0, show_default=True,
              help="Seconds of simulated traffic (the whole run adds about a minute of start and stop).")
@click.option("--requests", "n_requests", type=click.IntRange(1), default=None,
              help="Stop after this many scoring requests instead of --duration.")
@click.option("--rate", type=click.FloatRange(min=1), default=80.0, show_default=True,
              help="Scoring requests per second the simulated users make.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("demo-reward.png"), show_default=True, help="Where to write the reward-over-time PNG.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep each role's log here (default: a temporary directory).")
@click.option("--walkthrough", is_flag=True, help="Only the foundation walkthrough: ingest a small shop's events "
              "(some invalid) and show the topics and the dead-letter topic.")
@click.option("--prometheus", "with_prometheus", is_flag=True,
              help="Also start a real Prometheus server (the `prometheus` binary on PATH) scraping every role, "
              "with deploy/prometheus/alerts.yml loaded, and print its URL.")
@click.option("--prometheus-port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="Port of that Prometheus server.")
@click.option("--allocator", type=click.Choice(ALLOCATORS), default="auto", show_default=True,
              help="The roles' malloc. auto: jemalloc for every role where libjemalloc2 is installed (glibc's heaps "
              "fragment under the roles' churn), glibc otherwise. jemalloc: the same, and an error without it. "
              "glibc: none.")
@click.option("--arms", default=None,
              help="Compare two agent variants online, e.g. ours,ours_online_only: each serves half the users and "
              "learns from its own traffic with its own learner; prints both arms' reward over time and the verdict "
              "of `evaluate --arms` at the end (variants: ours, ours_no_meta, ours_no_anti_forgetting, "
              "ours_online_only, ours_retained, ours_changepoint).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def demo(duration: float, n_requests: int | None, rate: float, plot_path: Path, log_dir: Path | None,
         walkthrough: bool, with_prometheus: bool, prometheus_port: int, allocator: str, arms: str | None,
         as_json: bool) -> None:
    """Run the whole loop on the embedded broker (or RECSYS_BOOTSTRAP_SERVERS).

    Starts the broker, creates the topics and runs the reward join, the replay buffer,
    the learner and the scorer; simulated users request slates from the scorer and
    click and buy on them. Prints live progress, then a summary, writes a PNG of reward
    over time (learned vs random vs oracle, drift marked) and stops everything it started.
    """
    from stream.kafka.broker import BrokerError

    settings = load_settings()
    setup_logging("WARNING")
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    if walkthrough:
        _walkthrough(settings, say, as_json)
        return
    from stream.demo.closed_loop import LoopOptions, run_closed_loop
    from stream.demo.prometheus_server import PrometheusUnavailable, find_prometheus
    from stream.ops.allocator import AllocatorError, library_for

    try:
        library_for(allocator)      # before anything starts: say how to get it
    except AllocatorError as exc:
        fail(str(exc))
    if with_prometheus:
        try:
            find_prometheus()       # before anything starts: say how to get it
        except PrometheusUnavailable as exc:
            fail(str(exc))
    variants = _variants(arms) if arms else ()
    options = LoopOptions(duration=duration, requests=n_requests, rate=rate, plot=plot_path, log_dir=log_dir,
                          prometheus_port=prometheus_port if with_prometheus else None, allocator=allocator,
                          arms=variants)
    try:
        report = run_closed_loop(settings, options, say)
    except (BrokerError, PrometheusUnavailable) as exc:
        fail(str(exc))
    except (RuntimeError, TimeoutError) as exc:
        fail(f"demo failed: {exc}")
    if as_json:
        emit_json({k: v for k, v in report.items() if k != "series"})
        return
    last = report["last_window"]
    click.echo("")
    click.echo(f"requests {report['requests']} ({report['failed_requests']} failed), events {report['events']} "
               f"({report['events_per_second']}/s), {report['seconds']}s in all")
    versions = report["versions_published"]
    click.echo(f"policy versions on the topic (the last 20, and all since the newest full snapshot): "
               f"{_span(versions)}; served {_span(report['versions_served'])}")
    traffic = report["policy_traffic"]
    click.echo(f"policy traffic {traffic['policy_bytes_per_s'] / 1e3:.0f} kB/s (full snapshot "
               f"{traffic['full_snapshot_bytes']} B; deltas p50 {traffic['delta_bytes_p50']} B, "
               f"p99 {traffic['delta_bytes_p99']} B)")
    memory = report.get("memory_mb", {})
    if memory:
        click.echo("resident memory, start -> end: " + ", ".join(
            f"{role} {m['start']:.0f} -> {m['end']:.0f} MB" for role, m in memory.items() if m["end"] is not None))
    click.echo(f"{'phase':<8} {'requests':>8} {'learned':>8} {'random':>8} {'oracle':>8}   (expected reward per slate)")
    for name, row in report["phases"].items():
        if row["requests"]:
            click.echo(f"{name:<8} {row['requests']:>8} {row['learned']:>8.3f} {row['random']:>8.3f} "
                       f"{row['oracle']:>8.3f}")
    click.echo(f"last {last['requests']} requests: CTR learned {last['ctr_learned']:.3f} vs random "
               f"{last['ctr_random']:.3f}")
    fresh = report["click_to_live_seconds"]
    if fresh["clicks"]:
        click.echo(f"freshness, click -> a version trained on it serving: p50 {fresh['p50']:.1f}s, "
                   f"p99 {fresh['p99']:.1f}s over {fresh['clicks']} clicks ({fresh['not_live_at_end']} not yet live "
                   "at the end)")
    forgetting = report["forgetting_by_probe_age"]
    if forgetting:
        from stream.demo.closed_loop import PROBE_PERIOD_SECONDS

        click.echo("forgetting (share of the best value lost on held-out decisions of past "
                   f"{PROBE_PERIOD_SECONDS} s periods, by age): "
                   + ", ".join(f"{age}: {lost:.1%}" for age, lost in sorted(forgetting.items(), key=lambda kv: int(kv[0]))))
    if "prometheus" in report:
        prom = report["prometheus"]
        p99 = prom["scorer_http_p99_seconds"]
        click.echo(f"Prometheus ({prom['url']}, stopped with the demo): targets up {prom['targets_up']}; scorer HTTP "
                   f"p99 {'n/a' if p99 is None else f'{p99 * 1000:.1f} ms'}; versions {prom['policy_version']}; "
                   f"alerts firing {prom['alerts_firing'] or 'none'}")
    if "experiment" in report:
        _print_experiment(report)
    click.echo(f"dead letters: {report['dead_letters'] or 'none'}; plot: {report.get('plot')}")


def _variants(spec: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in spec.split(","))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or len(names) != 2 or names[0] == names[1]:
        fail(f"--arms takes two different agent variants, e.g. ours,ours_online_only; "
             f"{'unknown: ' + ', '.join(unknown) if unknown else f'got {spec!r}'} (variants: {', '.join(VARIANTS)})", 2)
    return names


def _print_experiment(report: dict) -> None:
    experiment = report["experiment"]
    truth = report["arm_expected_reward"]
    click.echo("arm                      requests  reward/request (clicks drawn, 95%)   expected reward/slate "
               "(simulator): all, second half")
    for arm in experiment["arms"]:
        est, exp = arm["reward"], truth.get(arm["arm"], {})
        click.echo(f"{arm['arm']:<24} {arm['requests']:>8}  {est['value']:.4f} [{est['low']:.4f}, {est['high']:.4f}]"
                   f"          {exp.get('all') or float('nan'):.4f}, {exp.get('second_half') or float('nan'):.4f}")
    comparison = experiment["comparison"]
    if comparison is not None:
        more = comparison["more_needed"]
        click.echo(f"{comparison['of']}: {comparison['difference']:+.4f} [{comparison['low']:+.4f}, "
                   f"{comparison['high']:+.4f}] (always valid) -> {comparison['verdict']}"
                   + (f"; about {more} more requests at this difference" if more is not None else ""))


def _span(numbers: list[int]) -> str:
    """A long list of version numbers as its first and last few."""
    return str(numbers) if len(numbers) <= 8 else f"[{numbers[0]}, {numbers[1]}, ..., {numbers[-2]}, {numbers[-1]}] " \
        f"({len(numbers)})"


def _walkthrough(settings: Settings, say, as_json: bool) -> None:
    from stream.demo.walkthrough import run_demo
    from stream.kafka.broker import BrokerError

    try:
        summary = run_demo(settings, say)
    except BrokerError as exc:
        fail(str(exc))
    if as_json:
        emit_json(summary)
        return
    click.echo("")
    click.echo(f"{'topic':<14} {'read':>6} {'produced':>9} {'dead-lettered':>14} {'on topic':>9}")
    for logical, counts in summary["ingested"].items():
        click.echo(f"{logical:<14} {counts['read']:>6} {counts['produced']:>9} "
                   f"{counts['dead_lettered']:>14} {summary['messages_on_topics'][logical]:>9}")
    click.echo(f"dead letters by reason: {summary['dead_letters']}  ({summary['seconds']}s)")
