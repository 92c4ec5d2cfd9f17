"""Real logs in and out: ``import``, ``evaluate`` and ``experiences dump``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from stream.cli.common import admin_or_exit, emit_json, fail, load_settings, setup_logging, stderr_console


def _time_option(value: str | None) -> float | None:
    """--since/--until as epoch seconds or an ISO 8601 time (UTC when it has no offset)."""
    if value is None:
        return None
    from stream.ingest.mapping import RowError, parse_time

    try:
        return parse_time(value, "epoch" if value.replace(".", "", 1).isdigit() else "iso")
    except RowError as exc:
        fail(f"--since: {exc}", 2)


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["obd", "movielens"]), default=None,
              help="A public dataset's layout (README, 'Bring your own logs'); --map overrides its columns.")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN",
              help="Which column holds a field: user, item, time, request (rows sharing it form one slate), "
              "position, propensity, click, purchase (a value), candidates ('|'-separated). Repeatable.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default=None,
              help="File format (default: from the file name).")
@click.option("--time-column", default=None, help="Same as --map time=COLUMN.")
@click.option("--time-format", default=None,
              help="epoch (seconds), epoch_ms, iso (ISO 8601, UTC without an offset) or a strptime pattern.")
@click.option("--position-base", type=click.Choice(["0", "1"]), default=None,
              help="What the top position is called in the file.")
@click.option("--click-at-least", type=float, default=None,
              help="A click is a click-column value of at least this (default 1; the movielens preset uses 4).")
@click.option("--all-items-candidates/--no-all-items-candidates", default=None,
              help="Every item of the files is a candidate of every slate (the obd preset does this).")
@click.option("--items", "items_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Catalogue file (item_id,title[,description,category,price] or MovieLens movies.csv); "
              "the movielens preset takes movies.csv beside the ratings by default.")
@click.option("--id-prefix", default=None, help="Prefix of the request ids (default: the file name's stem).")
@click.option("--policy-version", type=click.IntRange(0), default=None,
              help="Policy version the impressions are logged under (default 0: not one of ours).")
@click.option("--dry-run", is_flag=True, help="Map and validate every row; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON on stdout.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port while importing.")
def import_logs(files: tuple[Path, ...], preset: str | None, maps: tuple[str, ...], fmt: str | None,
                time_column: str | None, time_format: str | None, position_base: str | None,
                click_at_least: float | None, all_items_candidates: bool | None, items_file: Path | None,
                id_prefix: str | None, policy_version: int | None, dry_run: bool, as_json: bool,
                metrics_port: int | None) -> None:
    """Import logged impressions, clicks and purchases from FILES (CSV, JSON lines, Parquet).

    Every row is one shown item; rows that share a request form one slate. Events are
    keyed and partitioned as the scorer would log them, with deterministic ids (importing
    twice is harmless). Rows that cannot be mapped go to the dead-letter topic with their
    row number. Then run `recsys-stream process --until-caught-up` to join them.
    Exits 1 if the broker did not acknowledge every event.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from stream.ingest.importer import import_logs as run_import
    from stream.ingest.mapping import PRESETS, Mapping, parse_map
    from stream.ingest.tables import TableError, columns

    settings = load_settings()
    setup_logging("WARNING" if as_json else settings.log_level)
    try:
        fields = parse_map(maps)
        if time_column:
            fields["time"] = time_column
        changes: dict[str, Any] = {
            **fields, "time_format": time_format, "click_at_least": click_at_least,
            "all_items_as_candidates": all_items_candidates, "policy_version": policy_version,
            "position_base": int(position_base) if position_base is not None else None}
        if preset is not None:
            mapping = PRESETS[preset].with_overrides(**changes)
        else:
            missing = [f for f in ("item", "time") if f not in fields]
            if missing:
                fail(f"without --preset, map at least {', '.join(missing)} (--map FIELD=COLUMN)", 2)
            mapping = Mapping(**{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:
        fail(str(exc), 2)
    for path in files:
        if not path.is_file():
            fail(f"no such file: {path}", 2)
        try:
            present = set(columns(path, fmt))
        except TableError as exc:
            fail(str(exc), 2)
        absent = [c for c in mapping.required_columns() if c not in present]
        if absent:
            fail(f"{path.name} has no column {', '.join(map(repr, absent))}; it has {', '.join(sorted(present))}", 2)
    if items_file is None and preset == "movielens" and (files[0].parent / "movies.csv").is_file():
        items_file = files[0].parent / "movies.csv"
    if not dry_run:
        from stream.kafka.topics import ensure_topics

        ensure_topics(admin_or_exit(settings, "import"), settings)
    port = metrics_port if metrics_port is not None else settings.metrics_port or None
    if port is not None:
        from stream.ops.metrics import serve_metrics

        serve_metrics(port)
    progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), transient=as_json, console=stderr_console())
    with progress:
        task = progress.add_task(f"{'check' if dry_run else 'import'} {', '.join(p.name for p in files)}", total=None)
        try:
            report = run_import(settings, list(files), mapping, fmt=fmt, items_file=items_file, prefix=id_prefix,
                                dry_run=dry_run, progress=lambda done, total: progress.update(
                                    task, completed=done, total=total))
        except (ValueError, FileNotFoundError, TableError) as exc:
            fail(str(exc), 2)
    if as_json:
        emit_json(report.as_dict())
    else:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.reasons.items()))
        click.echo(f"{'checked' if dry_run else 'imported'} {report.rows} rows -> {report.impressions} impressions, "
                   f"{report.clicks} clicks, {report.purchases} purchases, {report.items} items; dead-lettered "
                   f"{report.dead_lettered}{f' ({reasons})' if reasons else ''}; {report.split_slates} rows "
                   f"could not form their slate; in {report.seconds:.1f}s", err=False)
        click.echo(f"propensities: {report.propensities}; candidates: {report.candidates}", err=True)
        if not dry_run:
            click.echo("next: recsys-stream process --until-caught-up", err=True)
    if report.delivery_failures:
        click.echo(f"error: {len(report.delivery_failures)} events were not acknowledged, first: "
                   f"{report.delivery_failures[0]}", err=True)
        sys.exit(1)


def _decoded(settings, logical: str) -> tuple[list, int]:
    from stream.kafka.snapshot import read_decoded

    return read_decoded(settings, logical, "evaluate", timeout=600)


def _read_experiences(settings, from_file: Path | None, fmt: str | None) -> tuple[list, int]:
    """(valid experiences, invalid records skipped) from the topic or a dumped file."""
    from stream.ingest.experience_files import read_experiences

    if from_file is not None:
        return read_experiences(from_file, fmt)
    return _decoded(settings, "experiences")


def _load_version(settings, which: str):
    """(version number, verified model) for N or latest, or exit with why not."""
    from models.serialization import PolicyIntegrityError
    from stream.policy.bus import load_version, newest_verified, read_versions
    from stream.policy.trust import trust_of

    trust = trust_of(settings)
    versions = read_versions(settings)
    if which == "latest":
        found = newest_verified(versions, trust, component="evaluate")
        if found is None:
            fail(f"policy {settings.policy_name!r} has no verified version on the topic")
    else:
        if not which.isdigit():
            fail(f"--policy takes a version number or latest, not {which!r}", 2)
        found = next((v for v in versions if v.version == int(which)), None)
        if found is None:
            fail(f"policy {settings.policy_name!r} has no complete version {which}")
    try:
        return found.version, load_version(versions, found.version, trust)
    except PolicyIntegrityError as exc:
        fail(f"v{found.version} does not verify: {exc}")


def _catalogue(settings):
    """The item texts the versions score from, as the learner and scorers read them."""
    from models.encoders import EncoderLoadError, TextEncoder
    from stream.items.embeddings import Catalogue

    try:
        catalogue = Catalogue(TextEncoder(), "evaluate")
    except EncoderLoadError as exc:
        fail(str(exc))
    items, _invalid = _decoded(settings, "items")
    catalogue.add(list({item.item_id: item for item in items}.values()))    # the newest record of each item
    return catalogue


@click.command()
@click.option("--policy", "which", default="latest", show_default=True,
              help="Version to evaluate: a number or latest. 'logged' evaluates only the logging policy.")
@click.option("--baseline", default="logged", show_default=True,
              help="What to compare against: logged (the logging policy) or a version number (then also the "
              "paired DR difference with its interval, as the learner's gate computes it).")
@click.option("--since", default=None, help="Judge experiences at or after this time (epoch seconds or ISO 8601).")
@click.option("--until", default=None, help="Judge experiences before this time (epoch seconds or ISO 8601).")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Experiences from a file (`experiences dump` output) instead of the experiences topic.")
@click.option("--per-item", is_flag=True, help="Also IPS/SNIPS of 'always show item a' for every item.")
@click.option("--ranking-only", is_flag=True,
              help="Only the ranking AUC (for logs without candidates or propensities, e.g. MovieLens).")
@click.option("--clip", type=click.FloatRange(min=1.0), default=None, help="Clip importance weights at this.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(0), default=1000, show_default=True,
              help="Bootstrap resamples of the 95% intervals.")
@click.option("--arms", default=None,
              help="Judge an online experiment instead: A,B (the arms of `score --arms`). Per arm requests, CTR, "
              "reward and cold-start reward with 95% intervals, and B - A with an interval valid however often "
              "you look, its verdict and the traffic still needed.")
@click.option("--settle", type=click.FloatRange(min=0.0), default=None,
              help="With --arms: leave out requests this close to the newest no-click outcome, whose window may "
              "still be open (default: the join's click window).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def evaluate(which: str, baseline: str, since: str | None, until: str | None, from_file: Path | None,
             per_item: bool, ranking_only: bool, clip: float | None, n_boot: int, arms: str | None,
             settle: float | None, as_json: bool) -> None:
    """Off-policy evaluation of a policy version on logged experiences: IPS, SNIPS, DM, DR, 95% intervals.

    The estimators are the learner's gate's; the decisions are top-of-slate experiences that
    name their candidates. Each version also gets a ranking AUC: its estimate of every shown
    item, adapted to the user's earlier outcomes as the scorer adapts, against what the user
    did. Exits 1, saying why, when the logs lack candidates or propensities (unless
    --ranking-only).

    With --arms, an online experiment is judged on what each arm earned on its own traffic instead.
    """
    from stream.learner.log_evaluation import (
        compare_versions,
        decisions,
        evaluate_policy,
        logged_value,
        ranking,
        shown_items,
        unevaluable,
    )
    from stream.learner.log_evaluation import per_item as item_estimates

    settings = load_settings()
    setup_logging("WARNING" if as_json else settings.log_level)
    start, end = _time_option(since), _time_option(until)
    names = _arm_names(arms) if arms is not None else None
    if from_file is None:
        admin_or_exit(settings, "evaluate")
    elif not from_file.is_file():
        fail(f"no such file: {from_file}", 2)
    started = time.monotonic()
    experiences, invalid = _read_experiences(settings, from_file, None)
    if names is not None:
        _evaluate_arms(experiences, invalid, names, start, end, settle, as_json, started)
        return
    shown = shown_items(experiences)      # all of them: earlier outcomes fill the scorer's memory
    window = [e for e in shown if (start is None or e.ts >= start) and (end is None or e.ts < end)]
    rows = decisions(window)
    result: dict[str, Any] = {"experiences": len(experiences), "invalid_skipped": invalid, "shown_items": len(window),
                              "decisions": len(rows), "since": start, "until": end}
    if per_item:
        result["per_item"] = item_estimates(window, n_boot)
    problem = None if ranking_only else unevaluable(window, rows)
    if problem is None and not ranking_only:
        result["logged"] = {k: v.as_dict() for k, v in logged_value(rows, n_boot).items()}
    versions = [] if which == "logged" or problem is not None else [which]
    if baseline != "logged" and problem is None:
        versions.append(baseline)
    catalogue = _catalogue(settings) if versions and window else None
    models = {}
    for role, spec in zip(("policy", "baseline"), versions):
        if catalogue is None:
            break
        number, model = _load_version(settings, spec)
        models[role] = model
        block: dict[str, Any] = {"version": number, "ranking": ranking(model, catalogue, shown, start, end)}
        if not ranking_only:
            try:
                ev = evaluate_policy(model, catalogue, rows, n_boot, clip)
            except ValueError as exc:
                fail(str(exc))
            block.update({"decisions": ev.decisions, "skipped_width": ev.skipped_width,
                          **{k: v.as_dict() for k, v in ev.estimates.items()}})
        result[role] = block
    if len(models) == 2 and not ranking_only and problem is None:
        verdict = compare_versions(models["policy"], models["baseline"], catalogue, rows, n_boot, clip)
        result["difference"] = {"dr": verdict.difference, "low": verdict.low, "high": verdict.high,
                                "decisions": verdict.decisions}
    if problem is not None:
        result["refused"] = problem
    result["seconds"] = round(time.monotonic() - started, 2)
    if as_json:
        emit_json(result)
    else:
        _print_evaluation(result)
    if problem is not None:
        click.echo(f"error: cannot evaluate off-policy: {problem}; --ranking-only judges the version's ranking "
                   "(AUC) instead", err=True)
        sys.exit(1)


def _arm_names(spec: str) -> list[str]:
    """The arms named as ``score --arms`` takes them (shares, if given, are not needed to judge)."""
    from stream.experiment.arms import Arms, ArmsError

    try:
        return Arms.parse(spec).names
    except ArmsError as exc:
        fail(f"--arms takes the experiment's policy names, e.g. A,B: {exc}", 2)


def _evaluate_arms(experiences: list, invalid: int, names: list[str], start: float | None, end: float | None,
                   settle: float | None, as_json: bool, started: float) -> None:
    from stream.experiment.report import judge
    from stream.join.reward_join import JoinConfig

    settle = JoinConfig().click_window if settle is None else settle
    report = judge(experiences, names, start, end, settle)
    result = {"experiences": len(experiences), "invalid_skipped": invalid, "since": start, "until": end,
              "settle_seconds": settle, **report.to_dict(), "seconds": round(time.monotonic() - started, 2)}
    if as_json:
        emit_json(result)
        return

    def interval(est: dict, digits: int = 4) -> str:
        return f"{est['value']:.{digits}f} [{est['low']:.{digits}f}, {est['high']:.{digits}f}]"

    click.echo(f"{len(experiences)} experiences; judged per arm (requests its own policy served):")
    for arm in result["arms"]:
        click.echo(f"  {arm['arm']:<16} requests {arm['requests']:>7}  users {arm['users']:>6}  "
                   f"CTR {interval(arm['ctr'])}  reward {interval(arm['reward'])}  "
                   f"cold start {interval(arm['cold_start_reward'])}"
                   + (f"  ({arm['served_by_other']} served by another arm's version)" if arm["served_by_other"] else ""))
    left = {k: v for k, v in result["left_out"].items() if v}
    if left:
        click.echo("  left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left.items()))
    comparison = result["comparison"]
    if comparison is not None:
        more = comparison["more_needed"]
        click.echo(f"{comparison['of']}: {comparison['difference']:+.4f} reward per request, always-valid 95% "
                   f"interval [{comparison['low']:+.4f}, {comparison['high']:+.4f}] after {comparison['n']} requests")
        click.echo(f"verdict: {comparison['verdict']}"
                   + (f" (about {more} more requests at this difference)" if more is not None else ""))


def _print_evaluation(result: dict[str, Any]) -> None:
    click.echo(f"{result['experiences']} experiences, {result['shown_items']} shown items, "
               f"{result['decisions']} decisions with candidates")

    def line(name: str, est: dict) -> str:
        return f"  {name:<6} {est['value']:.5f}  [{est['low']:.5f}, {est['high']:.5f}]"

    for role in ("logged", "policy", "baseline"):
        if role in result:
            block = result[role]
            title = role if role == "logged" else f"{role} v{block['version']}"
            click.echo(title + (f"  (ranking AUC {block['ranking']['auc']:.4f} on {block['ranking']['scored']} "
                                "shown items)" if "ranking" in block else ""))
            for name in ("ips", "snips", "dm", "dr"):
                if name in block:
                    click.echo(line(name, block[name]))
    if "difference" in result:
        diff = result["difference"]
        click.echo(f"policy - baseline, DR paired  {diff['dr']:+.5f}  [{diff['low']:+.5f}, {diff['high']:+.5f}]")
    for row in result.get("per_item", []):
        click.echo(f"  item {row['item']:<12} shown {row['shown']:>6}  ips {row['ips']['value']:.5f}  "
                   f"snips {row['snips']['value']:.5f}")


@click.group()
def experiences() -> None:
    """Read the joined experiences back out."""


@experiences.command("dump")
@click.option("--since", default=None, help="Only experiences at or after this time (epoch seconds or ISO 8601).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: stdout, jsonl only).")
def experiences_dump(since: str | None, fmt: str, out: Path | None) -> None:
    """Every experience on the topic (as stored: repeats of the at-least-once topic included), oldest first per
    partition. A count goes to stderr."""
    from stream.ingest.experience_files import write_experiences

    settings = load_settings()
    setup_logging(settings.log_level)
    cutoff = _time_option(since)
    if fmt == "parquet" and out is None:
        fail("--format parquet needs --out FILE", 2)
    admin_or_exit(settings, "experiences")
    found, invalid = _read_experiences(settings, None, None)
    chosen = [e for e in found if cutoff is None or e.ts >= cutoff]
    written = write_experiences(chosen, out, fmt)
    click.echo(f"wrote {written} experiences{f' to {out}' if out else ''}"
               f"{f'; skipped {invalid} invalid records' if invalid else ''}", err=True)
