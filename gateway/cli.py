"""flask commands: ``token`` (a dev token), ``init`` (schema, table, bucket), ``sweep``."""

from __future__ import annotations

import re
from datetime import timedelta

import click
from flask import Flask

from .api import services
from .auth import mint_token

_DURATION_RE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    return parse_duration(value)


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and s, m, h or d (e.g. 24h)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def register(app: Flask) -> None:
    @app.cli.command("token")
    @click.option("--sub", default="dev", show_default=True, help="The uploader (sub claim).")
    @click.option("--tenant", default="", help="Tenant claim: scopes keys and records.")
    @click.option(
        "--projects",
        default=None,
        help="Comma-separated projectIds the token may use (default: any).",
    )
    @click.option("--admin", is_flag=True, help="admin claim: may delete others' media.")
    @click.option(
        "--ttl",
        default="12h",
        show_default=True,
        callback=_duration_option,
        help="Lifetime, e.g. 30m, 12h, 7d.",
    )
    def token(sub: str, tenant: str, projects: str | None, admin: bool, ttl: timedelta) -> None:
        """Print a signed token for local use."""
        listed = [p.strip() for p in projects.split(",") if p.strip()] if projects else None
        click.echo(mint_token(sub, tenant=tenant, projects=listed, admin=admin, ttl=ttl))

    @app.cli.command("init")
    def init() -> None:
        """Create the record schema (SQLite or the DynamoDB table) and the S3 bucket."""
        services().provision()
        click.echo("records and object store ready")

    @app.cli.command("sweep")
    @click.option(
        "--older-than",
        default="24h",
        show_default=True,
        callback=_duration_option,
        help="Only touch uploads and unrecorded objects older than this.",
    )
    @click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
    def sweep_command(older_than: timedelta, dry_run: bool) -> None:
        """Abort stale multipart uploads; delete orphans and objects that have no record."""
        report = services().sweeper.sweep(older_than=older_than, dry_run=dry_run)
        for line in report.done:
            click.echo(line)
        for line in report.failed:
            click.echo(f"FAILED {line}", err=True)
        click.echo(
            f"{'would remove' if dry_run else 'removed'} {len(report.done)}"
            + (f", failed {len(report.failed)}" if report.failed else "")
        )
        if report.failed:
            raise SystemExit(1)
