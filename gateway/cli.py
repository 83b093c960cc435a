"""flask commands: ``token`` (a dev token), ``init`` (schema, table, bucket), ``sweep``."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import click
from flask import Flask

from .auth import mint_token
from .direct import parse_key, staging_key
from .errors import RecordNotFound
from .records import MediaRecord
from .services import Services, services

_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_option(ctx, param, value: str) -> timedelta:
    return parse_duration(value)


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and s, m, h or d (e.g. 24h)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def register(app: Flask) -> None:
    @app.cli.command("token")
    @click.option("--sub", default="dev", show_default=True, help="The uploader (sub claim).")
    @click.option("--tenant", default="", help="Tenant claim: scopes keys and records.")
    @click.option("--projects", default=None,
                  help="Comma-separated projectIds the token may use (default: any).")
    @click.option("--ttl", default="12h", show_default=True, callback=_duration_option,
                  help="Lifetime, e.g. 30m, 12h, 7d.")
    def token(sub: str, tenant: str, projects: str | None, ttl: timedelta) -> None:
        """Print a signed token for local use."""
        listed = [p.strip() for p in projects.split(",") if p.strip()] if projects else None
        click.echo(mint_token(sub, tenant=tenant, projects=listed, ttl=ttl))

    @app.cli.command("init")
    def init() -> None:
        """Create the record schema (SQLite or the DynamoDB table) and the S3 bucket."""
        svc = services()
        svc.records.create_schema()
        create_bucket = getattr(svc.store, "create_bucket", None)
        if create_bucket:
            create_bucket()
        click.echo("records and object store ready")

    @app.cli.command("sweep")
    @click.option("--older-than", default="24h", show_default=True, callback=_duration_option,
                  help="Only touch uploads and unrecorded objects older than this.")
    @click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
    def sweep_command(older_than: timedelta, dry_run: bool) -> None:
        """Abort stale multipart uploads; delete orphans and objects that have no record."""
        report = sweep(services(), older_than=older_than, dry_run=dry_run)
        for line in report:
            click.echo(line)
        click.echo(f"{'would remove' if dry_run else 'removed'} {len(report)}")


def sweep(svc: Services, *, older_than: timedelta, dry_run: bool = False,
          now: datetime | None = None) -> list[str]:
    """The sweeper's work, one line per thing removed (or to remove, with ``dry_run``)."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - older_than
    report: list[str] = []
    if svc.direct.direct is not None:
        if dry_run:
            overdue = svc.records.expired_pending(now=now.isoformat(timespec="seconds"), limit=500)
            report += [f"expire direct upload {r.media_id}" for r in overdue]
        else:
            report += [f"expire direct upload {media_id}"
                       for media_id in svc.direct.expire_overdue(now=now)]
    for upload in svc.store.pending_uploads():
        if upload.started < cutoff and not _is_live_direct_upload(svc, upload.key):
            report.append(f"abort upload {upload.key} ({upload.upload_id})")
            if not dry_run:
                svc.store.abort_pending(upload)

    journaled = set(svc.journal.keys())
    for key in sorted(journaled):
        if _has_record(svc, key):
            continue
        report.append(f"delete journaled orphan {key}")
        if not dry_run:
            svc.store.delete(key)
    if journaled and not dry_run:
        svc.journal.forget(journaled)

    for obj in svc.store.objects():
        if obj.key in journaled or obj.modified >= cutoff:
            continue
        if parse_key(obj.key)[0] is None or _has_record(svc, obj.key):
            continue  # not the gateway's key, or recorded (or a pending upload's staging key)
        report.append(f"delete unrecorded object {obj.key}")
        if not dry_run:
            svc.store.delete(obj.key)
    return report


def _record_of(svc: Services, media_id: str) -> MediaRecord | None:
    try:
        return svc.records.get(media_id)
    except RecordNotFound:
        return None


def _is_live_direct_upload(svc: Services, key: str) -> bool:
    """Whether a multipart upload to ``key`` is a direct upload still pending: those are the
    client's to finish until ``expiresAt`` (expire_overdue above cleans up the overdue ones)."""
    media_id, staging = parse_key(key)
    if media_id is None or staging:
        return False
    record = _record_of(svc, media_id)
    return record is not None and record.s3_key == key and record.status == "pending"


def _has_record(svc: Services, key: str) -> bool:
    """Whether a live record owns the key: the record's own key while it is stored or a direct
    upload still pending; a staging key (``<key>.upload``) only while its upload is pending."""
    media_id, staging = parse_key(key)
    if media_id is None:
        return True  # not ours: never delete it
    record = _record_of(svc, media_id)
    if record is None:
        return False
    if staging:
        return staging_key(record.s3_key) == key and record.status == "pending"
    return record.s3_key == key and record.status in ("stored", "pending")
