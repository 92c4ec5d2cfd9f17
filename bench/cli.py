"""``recsys-stream bench``: the benchmarks a user runs to compare us, each writing JSON (and a PNG)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click


def _say(line: str) -> None:
    click.echo(line, err=True)


def _write_json(payload: Any, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    _say(f"wrote {path}")


def _set_threads(threads: int) -> None:
    """Per-decision work is small: more torch threads than free cores only adds contention."""
    import torch

    torch.set_num_threads(threads)


@click.group()
def bench() -> None:
    """Benchmarks: learning quality against Vowpal Wabbit and baselines, learner speed, all of them."""


@bench.command("quality")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here ({name, metrics, params, machine}).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write reward over time and cold-start bars here (PNG).")
@click.option("--seeds", default="3", show_default=True,
              help="Streams to play: a count (3 = seeds 1..3), a list (41,42,43) or a range (41-50). "
              "Seeds 0, 100, ..., 700 tuned the defaults: do not report them.")
@click.option("--drift", default=None, help="START,END: the shares of the stream during which segment 0's "
              "tastes are shifted (or it is away) [default: 0.35,0.65].")
@click.option("--scenario", type=click.Choice(["drift", "away"]), default="drift", show_default=True,
              help="drift: segment 0's tastes rotate during the span, then return. away: segment 0 makes no "
              "requests during the span while the other segments' tastes rotate for good, then comes back "
              "unchanged (what a learner kept of it is what it did not forget).")
@click.option("--requests", type=click.IntRange(200), default=None, help="Requests per stream [default: 20000].")
@click.option("--round-size", type=click.IntRange(1), default=None,
              help="Requests answered per policy version before it learns from them [default: 100].")
@click.option("--policies", default=None, help="Comma-separated subset (the oracle always runs): random, "
              "popularity, vw_squarecb, vw_epsilon, ours, ours_no_meta, ours_no_anti_forgetting; also ours_online_only "
              "(no replay, no EWC, no distillation), ours_retained (retained user towers mixed per user at serve "
              "time), ours_no_item_evidence (served without the items' recent residuals, the scorer's "
              "--no-item-evidence) and ours_changepoint (each user served from where their current tastes began).")
@click.option("--merge", "merge", default=None, help="Comma-separated JSON reports of runs on disjoint seeds (e.g. "
              "run in parallel): merge them into one instead of running.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch CPU threads (two multi-threaded runs sharing cores ran 9x slower here).")
def quality_command(json_path: Path | None, plot_path: Path | None, seeds: str, drift: str | None,
                    scenario: str, requests: int | None, round_size: int | None, policies: str | None, merge: str | None,
                    threads: int) -> None:
    """Closed-loop learning quality on the simulator: every policy on the identical stream, with drift, new
    users and new items; cumulative reward, CTR per phase, regret, cold start, forgetting, throughput."""
    from bench.quality import config_from, merge_reports, paired_table, plot, run_quality, summary_table

    _set_threads(threads)
    try:
        if merge:
            report = merge_reports([json.loads(Path(p.strip()).read_text()) for p in merge.split(",")])
        else:
            config = config_from(requests, seeds, policies, round_size, drift, scenario)
            report = run_quality(config, _say)
    except (ValueError, ImportError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if plot_path is not None:
        plot(report, plot_path)
        _say(f"wrote {plot_path}")
    _write_json(report, json_path)
    click.echo(summary_table(report))
    click.echo(paired_table(report))


@bench.command("movielens")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A MovieLens folder (ratings.csv, movies.csv), e.g. ../shared/data/movielens-small.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here ({name, metrics, params, machine}).")
@click.option("--periods", type=click.IntRange(3, 100), default=8, show_default=True,
              help="Equal-count periods the stream is cut into (the first only trains).")
@click.option("--policies", default=None, help="Comma-separated subset: ours, ours_no_meta, ours_no_anti_forgetting, "
              "ours_no_item_evidence, fine_tune, full_retrain, full_retrain_adapted, vw, river_fm, lenskit_mf, "
              "lenskit_mf_fold_in, sasrec, popularity [default: all]; also ours_changepoint and "
              "full_retrain_adapted_changepoint (each user served from where their current tastes began). "
              "Baselines run with the settings "
              "`python -m bench.tune_movielens` chose on the first half.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of model initialisation and sampling.")
@click.option("--limit", type=click.IntRange(500), default=None, help="Use only the first N ratings (a quick look).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
def movielens_command(data_dir: Path, json_path: Path | None, periods: int, policies: str | None, seed: int,
                      limit: int | None, threads: int) -> None:
    """Real data period by period: each policy predicts a period of MovieLens ratings before it learns it
    (AUC, GAUC, log loss, new users, new items), then backward transfer and training time."""
    from bench.movielens import POLICIES, paired_table, run_movielens, summary_table

    _set_threads(threads)
    chosen = tuple(p.strip() for p in policies.split(",")) if policies else POLICIES
    try:
        report = run_movielens(data_dir, periods, chosen, seed, limit, _say)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    _write_json(report, json_path)
    click.echo(summary_table(report))
    click.echo(paired_table(report))


@bench.command("movielens-loop")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A MovieLens folder (ratings.csv, movies.csv), e.g. ../shared/data/movielens-small.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here ({name, metrics, params, machine}).")
@click.option("--periods", type=click.IntRange(3, 100), default=8, show_default=True,
              help="Equal-count periods, as in `bench movielens` (the first only trains).")
@click.option("--limit", type=click.IntRange(500), default=None, help="Use only the first N ratings (a quick look).")
def movielens_loop_command(data_dir: Path, json_path: Path | None, periods: int, limit: int | None) -> None:
    """MovieLens through the product: import, process --until-caught-up, replay, learn --until-caught-up and
    evaluate --ranking-only, period by period on the embedded broker (the loop's AUC next to the offline row)."""
    from bench.movielens_loop import measure

    try:
        report = measure(data_dir, periods, limit, _say)
    except (FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    _write_json(report, json_path)
    m = report["metrics"]
    click.echo(f"AUC {m['auc_mean']} ± {m['auc_se']} over {len(m['per_period']) - 1} judged periods; "
               f"dead letters {m['dead_letters'] or 'none'}; seconds {m['seconds']}")


@bench.command("learner")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here.")
@click.option("--examples", type=click.IntRange(256), default=20_000, show_default=True,
              help="Logged examples both learners learn.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CPU, and CUDA too when torch sees a GPU.")
def learner_command(json_path: Path | None, examples: int, device: str) -> None:
    """Our learner's update throughput against Vowpal Wabbit on identical logged examples (same run)."""
    from bench.learner_vs_vw import measure

    try:
        out = measure(examples, device, progress=_say)
    except (RuntimeError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    _write_json(out, json_path)
    m = out["metrics"]
    click.echo(f"Vowpal Wabbit {m['vw_samples_per_second']:,.0f} samples/s; " + "; ".join(
        f"{k.removesuffix('_samples_per_second')} {v:,.0f} samples/s ({m[k.removesuffix('_samples_per_second') + '_vs_vw']}x)"
        for k, v in m.items() if k.startswith("ours_") and k.endswith("_samples_per_second")))


@bench.command("stream")
@click.option("--requests", type=click.IntRange(200), default=40_000, show_default=True,
              help="Simulated requests of the backlog and of the end-to-end run (about 1.6 events each).")
@click.option("--paced-seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="How long traffic is paced at half the measured end-to-end rate.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here.")
def stream_command(requests: int, paced_seconds: float, json_path: Path | None) -> None:
    """The stream hot path: the join alone from a backlog, producer -> process -> replay end to end, and
    click -> experience / click -> stored delays at half that rate (`recsys-stream process` and `replay`)."""
    from bench.stream import measure, summary

    try:
        out = measure(requests, paced_seconds, progress=_say)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    _write_json(out, json_path)
    click.echo(summary(out))


@bench.command("scorer")
@click.option("--transport", type=click.Choice(["http", "kafka"]), default="kafka", show_default=True)
@click.option("--rate", type=click.FloatRange(min=1), default=500.0, show_default=True, help="Offered requests/s.")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True, help="How long to offer them.")
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Keep-alive HTTP connections sharing the offered load (http only).")
@click.option("--items", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Catalogue size: the scorer embeds every item's text before it serves.")
@click.option("--partitions", type=click.IntRange(1, 1024), default=None,
              help="Partitions of score-requests and score-responses (default: RECSYS_SCORING_PARTITIONS, "
                   "else RECSYS_PARTITIONS).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result here.")
def scorer_command(transport: str, rate: float, seconds: float, candidates: int, clients: int, items: int,
                   partitions: int | None, json_path: Path | None) -> None:
    """`recsys-stream score` at a fixed offered load: requests/s answered and request -> response p50/p99."""
    from bench.scorer_transport import measure, summary

    try:
        out = measure(transport, rate, seconds, candidates, clients, items, progress=_say, partitions=partitions)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _write_json(out, json_path)
    click.echo(summary(out))


#: What `bench all` runs: name -> (module, keyword arguments of its measure()), full and quick.
SUITE = {
    "quality": ("bench.quality", {}, {"requests": 1500, "seeds": 1}),
    "learner_vs_vw": ("bench.learner_vs_vw", {"examples": 20_000}, {"examples": 1024}),
    "learner_throughput": ("bench.learner_throughput", {"seconds": 5.0}, {"seconds": 0.3, "batch_size": 64}),
    "sim_throughput": ("bench.sim_throughput", {}, {"requests": 5000, "batch": 1000}),
    "replay_sampling": ("bench.replay_sampling", {}, {"rows": 3000, "window": 1000, "reservoir": 1000}),
    "sequential_calibration": ("bench.sequential_calibration", {"runs": 1000, "requests": 20_000, "every": 500, "seed": 0},
                               {"runs": 5, "requests": 1000, "every": 250, "seed": 0}),
    "stream": ("bench.stream", {"requests": 40_000, "paced_seconds": 20.0}, {"requests": 1000, "paced_seconds": 3.0}),
    "scorer_latency": ("bench.scorer_latency", {}, {"calls": 100, "items": 200}),
    "scorer_http": ("bench.scorer_transport", {"transport": "http", "rate": 500.0, "seconds": 20.0},
                    {"transport": "http", "rate": 50.0, "seconds": 2.0, "items": 200}),
    "scorer_kafka": ("bench.scorer_transport", {"transport": "kafka", "rate": 500.0, "seconds": 20.0},
                     {"transport": "kafka", "rate": 50.0, "seconds": 2.0, "items": 200}),
    "freshness": ("bench.freshness", {"duration": 60.0, "rate": 80.0, "publish_seconds": 1.0},
                  {"duration": 20.0, "rate": 40.0, "publish_seconds": 1.0}),
}


def run_one(name: str, quick: bool) -> dict[str, Any]:
    import importlib

    module, full, small = SUITE[name]
    kwargs = small if quick else full
    counted = name in ("replay_sampling", "sim_throughput")      # these report (done, total)
    progress = (lambda done, total: _say(f"  {done:,}/{total:,}")) if counted else _say
    return importlib.import_module(module).measure(**kwargs, progress=progress)


@bench.command("all")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write every result here: a list of {name, metrics, params, machine}.")
@click.option("--only", default=None, help=f"Comma-separated subset of: {', '.join(SUITE)}.")
@click.option("--quick", is_flag=True, help="Tiny configurations (seconds each): checks that everything runs, "
              "measures nothing worth quoting.")
def all_command(json_path: Path, only: str | None, quick: bool) -> None:
    """Every benchmark in one run (about 25 minutes on 2 cores), one JSON file (and the quality plot beside it)."""
    names = [n.strip() for n in only.split(",")] if only else list(SUITE)
    unknown = set(names) - set(SUITE)
    if unknown:
        raise click.ClickException(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(SUITE)}")
    results, failed = [], []
    for i, name in enumerate(names, start=1):
        _say(f"[{i}/{len(names)}] {name}{' (quick)' if quick else ''}")
        started = time.monotonic()
        try:
            results.append(run_one(name, quick))
            if name == "quality":
                from bench.quality import plot

                plot(results[-1], json_path.with_name(json_path.stem + "-quality.png"))
                _say(f"  wrote {json_path.with_name(json_path.stem + '-quality.png')}")
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others' results
            failed.append(name)
            results.append({"name": name, "metrics": {}, "params": {"quick": quick},
                            "machine": {}, "error": f"{type(exc).__name__}: {exc}"})
            _say(f"  {name} FAILED: {exc}")
        _say(f"  {name} done in {time.monotonic() - started:.0f}s")
        _write_json(results, json_path)        # after each, so a long run keeps what it has
    click.echo(f"{len(results) - len(failed)}/{len(results)} benchmarks ran; results in {json_path}")
    if failed:
        sys.exit(1)
