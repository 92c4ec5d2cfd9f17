"""``recsys-stream dlq``: inspect the dead-letter topic and replay what a fix made valid."""

from __future__ import annotations

import time
from typing import Any

import click

from stream.cli.common import admin_or_exit, emit_json, load_settings
from stream.schemas import REASONS


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topic and replay what a fix made valid."""


def _dlq_filters(reason: tuple[str, ...], topic: tuple[str, ...], since) -> dict[str, Any]:
    import calendar

    return {"reasons": set(reason) or None, "topics": set(topic) or None,
            "since": calendar.timegm(since.timetuple()) if since is not None else None}


_DLQ_FILTERS = [
    click.option("--reason", multiple=True, type=click.Choice(list(REASONS)),
                 help="Only letters refused for this reason (repeatable)."),
    click.option("--topic", multiple=True, help="Only letters from this logical source topic (repeatable)."),
    click.option("--since", type=click.DateTime(), default=None,
                 help="Only letters dead-lettered at or after this UTC time (e.g. 2026-11-24T06:00:00)."),
]


def _with_dlq_filters(command):
    for option in reversed(_DLQ_FILTERS):
        command = option(command)
    return command


@dlq.command("show")
@_with_dlq_filters
@click.option("--limit", type=click.IntRange(0), default=10, show_default=True, help="Letters to print in full.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def dlq_show(reason: tuple[str, ...], topic: tuple[str, ...], since, limit: int, as_json: bool) -> None:
    """Counts by source topic and reason, then the newest letters with their error."""
    from stream.kafka.topics import logical_name
    from stream.ops.dlq_replay import read_dead_letters, select

    settings = load_settings()
    admin_or_exit(settings, "dlq")
    letters = select(read_dead_letters(settings), settings, **_dlq_filters(reason, topic, since))
    counts: dict[str, int] = {}
    for letter in letters:
        key = f"{logical_name(settings, letter.source_topic)}/{letter.reason}"
        counts[key] = counts.get(key, 0) + 1
    newest = sorted(letters, key=lambda letter: letter.ts)[-limit:] if limit else []
    rows: list[dict[str, Any]] = [{"ts": letter.ts, "source_topic": letter.source_topic, "reason": letter.reason, "error": letter.error,
             "component": letter.component, "partition": letter.partition, "offset": letter.offset,
             "line": letter.line, "original": letter.original.decode("utf-8", "replace"),
             "truncated": letter.original_truncated} for letter in newest]
    if as_json:
        emit_json({"letters": len(letters), "by_topic_and_reason": counts, "newest": rows})
        return
    click.echo(f"{len(letters)} dead letters" + ("" if not counts else ": " + ", ".join(
        f"{k} {n}" for k, n in sorted(counts.items()))))
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
        where = f"line {r['line']}" if r["line"] else f"p{r['partition']}@{r['offset']}"
        click.echo(f"{when} {r['source_topic']} {where} {r['reason']} ({r['component']}): {r['error'][:160]}")


@dlq.command("replay")
@_with_dlq_filters
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def dlq_replay(reason: tuple[str, ...], topic: tuple[str, ...], since, dry_run: bool, as_json: bool) -> None:
    """Send dead letters that now pass their topic's contract back to that topic, bytes unchanged.

    Letters still invalid are counted by the reason they fail for now and not sent; truncated
    originals and derived topics are skipped. Replaying twice within the reward join's
    de-duplication horizon (2 h) is harmless: it drops repeated event_ids.
    """
    from stream.ops.dlq_replay import read_dead_letters, replay, select

    settings = load_settings()
    admin_or_exit(settings, "dlq")
    letters = select(read_dead_letters(settings), settings, **_dlq_filters(reason, topic, since))
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    say(f"{len(letters)} dead letters selected{' (dry run)' if dry_run else ''}")
    report = replay(settings, letters, dry_run, progress=lambda done, total: say(f"  {done}/{total} examined"))
    out = report.as_dict()
    if as_json:
        emit_json(out)
        return
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {out['replayed']}: {out['replayed_by_topic_and_reason'] or '-'}; still invalid "
               f"{out['still_invalid'] or 'none'}; skipped {out['skipped'] or 'none'}")
