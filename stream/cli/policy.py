"""``recsys-stream policy``: list, inspect and roll back the versions on the policies topic."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from stream.cli.common import admin_or_exit, emit_json, fail, load_settings


@click.group()
def policy() -> None:
    """List, inspect and roll back policy versions on the policies topic."""


def _header_row(header) -> dict[str, Any]:
    return {"version": header.version, "parent": header.parent, "kind": header.kind, "created_at": header.created_at,
            "bytes": header.total_bytes, "chunks": header.n_chunks, "signed": header.signature is not None,
            "checksum": header.checksum, "metrics": header.metrics}


@policy.command("list")
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policy_list(name: str | None, as_json: bool) -> None:
    """Every complete version retained on the topic, oldest first."""
    from stream.policy.bus import read_versions

    settings = load_settings()
    admin_or_exit(settings, "policy")
    versions = read_versions(settings, name)
    rows = [_header_row(v.header) for v in versions]
    if as_json:
        emit_json({"name": name or settings.policy_name, "versions": rows})
        return
    if not rows:
        click.echo(f"no versions of policy {name or settings.policy_name!r} yet", err=True)
        return
    click.echo(f"{'version':>7} {'parent':>6} {'kind':<5}  {'created (UTC)':<19} {'bytes':>9} {'signed':<6} metrics")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_at"]))
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        click.echo(f"{r['version']:>7} {r['parent'] or '-':>6} {r['kind']:<5}  {created:<19} {r['bytes']:>9} "
                   f"{'yes' if r['signed'] else 'no':<6} {metrics}")


@policy.command("show")
@click.argument("version", type=click.IntRange(1))
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policy_show(version: int, name: str | None, as_json: bool) -> None:
    """One version's header, verified (checksum, signature when a key is set, shapes)."""
    from models.serialization import PolicyIntegrityError
    from stream.policy.bus import load_version, read_versions
    from stream.policy.trust import trust_of

    settings = load_settings()
    admin_or_exit(settings, "policy")
    versions = read_versions(settings, name)
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        fail(f"policy {name or settings.policy_name!r} has no complete version {version}")
    row = _header_row(found.header) | {"model_config": found.header.model_config}
    try:
        load_version(versions, version, trust_of(settings))   # a delta: rebuilt from its snapshot, all verified
        row["verified"], row["problem"] = True, None
    except PolicyIntegrityError as exc:
        row["verified"], row["problem"] = False, str(exc)
    if as_json:
        emit_json(row)
    else:
        for k, v in row.items():
            click.echo(f"{k:<13} {v}")
    if not row["verified"]:
        sys.exit(1)


@policy.command("rollback")
@click.argument("version", type=click.IntRange(1))
@click.option("--name", default=None, help="Policy name (default RECSYS_POLICY_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
def policy_rollback(version: int, name: str | None, as_json: bool) -> None:
    """Republish VERSION's weights as a new version; scorers swap to it like to any other."""
    from models.serialization import PolicyIntegrityError
    from stream.policy.bus import PolicyNotFound, PolicyRaceError, rollback
    from stream.policy.trust import UnsignedRefused

    settings = load_settings()
    admin_or_exit(settings, "policy")
    try:
        header = rollback(settings, version, name)
    except (PolicyNotFound, PolicyIntegrityError, PolicyRaceError, UnsignedRefused) as exc:
        fail(f"cannot roll back: {exc}")
    if as_json:
        emit_json(_header_row(header))
    else:
        click.echo(f"republished v{version} as v{header.version} (parent v{header.parent})")
