"""flask commands: ``token`` (a dev token), ``init`` (schema, table, bucket), ``check`` (what
the store verifies), ``sweep``, ``worker``, ``queue``, ``quota``."""

from __future__ import annotations

import json
import re
import signal
import threading
from datetime import timedelta

import click
from flask import Flask

from gateway import metrics
from gateway.http.api import services
from gateway.http.auth import mint_token
from gateway.media.records.quota import QuotaLimits
from gateway.processing.worker import Worker, WorkerOptions, run_lanes
from gateway.queue import Queue
from gateway.storage.integrity import LOCAL_REPORT, holds, report

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

    @app.cli.command("check")
    def check() -> None:
        """Probe the object store: which checksums it verifies (a wrong one sent to a scratch
        key, deleted again), its addressing, CORS and notifications. Exits 1 when the store
        would keep other bytes than the gateway sent under GATEWAY_S3_INTEGRITY (or refuse
        every upload)."""
        svc = services()
        storage = svc.storage
        click.echo(f"store: {svc.settings.storage_url}")
        if storage.probe is None:
            for line in LOCAL_REPORT:
                click.echo(line)
            return
        probed = storage.probe()
        mode, setting = svc.settings.effective_s3_integrity, svc.settings.s3_integrity
        for line in report(probed, mode, setting if setting == mode else f"{setting} ({mode})"):
            click.echo(line)
        if not holds(probed, mode):
            raise SystemExit(1)

    @app.cli.command("worker")
    @click.option(
        "--concurrency",
        type=int,
        default=None,
        help="Processing jobs at once (default GATEWAY_WORKER_CONCURRENCY).",
    )
    def worker_command(concurrency: int | None) -> None:
        """Process the queue and deliver webhooks until SIGTERM or SIGINT (running jobs finish
        first). Processing and webhook deliveries are two lanes: own queue, own slots."""
        svc = services()
        settings = svc.settings
        stop = threading.Event()
        lanes: dict[str, Worker] = {}  # by queue URL
        if settings.processing:
            lanes[settings.queue_url] = Worker(
                svc.queue,
                svc.pipeline.handle,
                on_last_failure=svc.pipeline.on_last_failure,
                options=WorkerOptions(
                    concurrency=concurrency or settings.worker_concurrency,
                    visibility=settings.job_lease_seconds,
                ),
                stop=stop,
            )
        if svc.webhook_queue is not None and svc.deliveries is not None:
            lanes[settings.effective_webhook_queue_url] = Worker(
                svc.webhook_queue,
                svc.deliveries.handle,
                on_last_failure=svc.deliveries.on_last_failure,
                options=WorkerOptions(
                    concurrency=settings.webhook_concurrency,
                    visibility=settings.job_lease_seconds,
                ),
                stop=stop,
                name="webhook",
            )
        if not lanes:
            raise click.ClickException(
                "GATEWAY_PROCESSING is off and neither GATEWAY_WEBHOOK_URL nor"
                " GATEWAY_SNS_TOPIC_ARN is set: nothing to do."
            )

        def on_signal(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        address = settings.worker_metrics_address
        if address is not None:
            metrics.serve(*address, metrics.QueueCollector(svc.queue.stats))
        for url, lane in lanes.items():
            click.echo(f"worker: {lane.options.concurrency} at once on {url}", err=True)
        run_lanes(list(lanes.values()))

    lane_option = click.option(
        "--lane",
        type=click.Choice(["processing", "webhooks"]),
        default="processing",
        show_default=True,
        help="The processing queue, or the webhook deliveries' queue.",
    )

    @app.cli.group("queue")
    def queue_group() -> None:
        """The processing queue and the webhook deliveries' queue."""

    @queue_group.command("stats")
    @lane_option
    def queue_stats(lane: str) -> None:
        """Waiting, in flight and dead jobs, as JSON."""
        stats = _lane_queue(lane).stats()
        click.echo(
            json.dumps(
                {
                    "visible": stats.visible,
                    "inFlight": stats.in_flight,
                    "dead": stats.dead,
                    "oldestAgeSeconds": stats.oldest_age,
                }
            )
        )

    @queue_group.command("redrive")
    @click.option("--limit", type=int, default=1000, show_default=True)
    @lane_option
    def queue_redrive(limit: int, lane: str) -> None:
        """Move dead jobs back to the queue (after fixing what made them fail)."""
        click.echo(f"redrove {_lane_queue(lane).redrive(limit=limit)}")

    @app.cli.group("quota")
    def quota_group() -> None:
        """Quotas (GATEWAY_QUOTA_*)."""

    @quota_group.command("recount")
    def quota_recount() -> None:
        """Set the DynamoDB quota ledgers to what each project and tenant holds: once, after
        turning quotas on for a table that already has records (uploads may go on)."""
        svc = services()
        if not QuotaLimits.of(svc.settings).active:
            raise click.ClickException("No quota is set (GATEWAY_QUOTA_*): nothing to recount.")
        if not svc.settings.records_url.startswith("dynamodb://"):
            click.echo("SQLite checks quotas against its records directly: nothing to recount.")
            return
        counted = svc.records.recount_ledgers()
        for tenant, project_id, held in counted:
            click.echo(
                json.dumps(
                    {"tenant": tenant, "projectId": project_id, "files": held.files,
                     "bytes": held.bytes}
                )
            )  # fmt: skip
        click.echo(f"recounted {len(counted)} projects", err=True)

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


def _lane_queue(lane: str) -> Queue:
    svc = services()
    if lane == "processing":
        return svc.queue
    if svc.webhook_queue is None:
        raise click.ClickException(
            "No GATEWAY_WEBHOOK_URL nor GATEWAY_SNS_TOPIC_ARN is set: there is no deliveries queue."
        )
    return svc.webhook_queue
