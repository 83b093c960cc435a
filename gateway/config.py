"""Every setting of the gateway: one default each, overlaid by ``GATEWAY_*`` env vars.

``Settings.from_env()`` parses and validates at start-up; a bad value fails loudly with the
name of the variable. docs/settings.md lists the same names and defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MiB = 1024 * 1024
PREFIX = "GATEWAY_"
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PARTS = 10_000
# The audience of upload tickets (gateway/uploads/tickets.py): never a bearer token's.
TICKET_AUDIENCE = "upload-gateway:ticket"
TICKET_MAX_SECONDS = 3600
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # media/naming.py's IDENTIFIER_RE
# arn:<partition>:sns:<region>:<account>:<topic> (Ceph RGW's have no account)
_SNS_ARN_RE = re.compile(r"arn:[a-z-]+:sns:[a-z0-9-]*:[0-9]*:[A-Za-z0-9_-]{1,256}(?:\.fifo)?")
# URL-unreserved characters: the secret is the password of a push endpoint's URL, unencoded
_EVENTS_SECRET_RE = re.compile(r"[A-Za-z0-9._~-]{32,256}")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the env var."""


def _env_name(name: str) -> str:
    return PREFIX + name.upper()


def _host_port(bind: str) -> tuple[str, int] | None:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def positive(default: int) -> Any:
    """A setting that must be above 0 (``validate`` says so, naming its variable)."""
    return field(default=default, metadata={"rule": "positive"})


def positive_seconds(default: float) -> Any:
    return field(default=default, metadata={"rule": "positive seconds"})


@dataclass(frozen=True)
class Settings:
    # Where objects go: "s3://bucket/prefix" or a local directory (the embedded default).
    storage_url: str = "var/media"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_part_size: int = positive(6 * MiB)
    s3_parts_in_flight: int = positive(2)
    s3_max_pool_connections: int = positive(64)
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0
    s3_max_attempts: int = positive(5)
    # "on" only for a store that refuses a PutObject whose x-amz-checksum-sha256 differs from
    # its bytes and reports it on HeadObject (AWS S3; not moto, not Ceph RGW 16): a direct
    # upload's promised SHA-256 is then taken from S3 instead of read back
    # (gateway/uploads/direct_verify.py).
    s3_verifies_sha256: bool = False
    # What makes every object the gateway writes exactly the bytes it sent, whatever the store
    # verifies (gateway/storage/integrity.py): "md5" (Content-MD5 sent, each ETag compared),
    # "crc32c" (only for a store that refuses a wrong x-amz-checksum-crc32c: AWS S3), "auto"
    # (crc32c on AWS S3, md5 on any other endpoint: ``effective_s3_integrity``).
    s3_integrity: str = "auto"
    # Where media records go: "sqlite:///path" (default) or "dynamodb://table".
    records_url: str = "sqlite:///var/gateway.db"
    dynamodb_endpoint_url: str = ""
    # A durable journal of objects that could not be rolled back; the sweeper reads it.
    orphan_journal: str = "var/orphans.jsonl"

    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwt_private_key: str = field(default="", repr=False)  # only for `flask token` with RS256
    jwt_algorithm: str = ""  # HS256 with a secret, RS256 with a public key
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: int = 30

    cdn_base_url: str = ""
    cloudfront_key_id: str = ""
    cloudfront_private_key: str = field(default="", repr=False)
    cloudfront_url_ttl: int = positive(3600)
    public_base_url: str = ""  # embedded mode: absolute base for media URLs (else the request's)
    trusted_proxies: int = 0  # X-Forwarded-* hops to trust (1 behind the bundled nginx)

    max_upload_bytes: int = positive(500 * MiB)
    allowed_types: tuple[str, ...] = ("image/*", "video/*", "audio/*")
    max_files: int = positive(10)
    max_fields: int = positive(20)
    max_field_bytes: int = positive(4096)
    max_part_header_bytes: int = positive(8192)
    max_filename_chars: int = positive(255)
    read_size: int = positive(1 * MiB)
    # A slow body holds a worker connection: end it with 408 when no byte comes for
    # body_idle_timeout seconds, or when it falls behind body_min_rate bytes per second of
    # waiting (0: no rate check), with body_rate_grace seconds of credit at the start and at
    # most that much banked (gateway/http/bodies.py). Keep the idle limit below nginx's
    # client_body_timeout so that the gateway's JSON 408 is what the client sees.
    body_idle_timeout: float = positive_seconds(30.0)
    body_min_rate: int = 1024
    body_rate_grace: float = 30.0
    # A graceful stop (SIGTERM to gunicorn, gateway/http/shutdown.py): /readyz answers 503 for
    # shutdown_delay seconds before the listeners close; upload bodies still arriving
    # shutdown_upload_grace seconds after the SIGTERM end with 503 shutting_down (rolled back).
    shutdown_delay: float = 5.0
    shutdown_upload_grace: float = 60.0

    # Direct-to-S3 uploads (presigned): at or under the threshold one PUT/POST, above it multipart.
    direct_single_put_max: int = positive(5 * MiB)
    direct_max_bytes: int = positive(5 * 1024 * MiB)
    direct_max_files: int = positive(20)
    direct_part_size: int = positive(8 * MiB)
    direct_url_ttl: int = positive(3600)
    direct_max_batch_bytes: int = positive(10 * 1024 * MiB)  # bytes one initiate may promise in all
    direct_max_pending: int = positive(100)  # pending direct uploads per caller (more: 429)
    direct_part_urls_per_page: int = positive(100)  # part URLs per answer (more: GET .../parts)

    # The job queue of the processing pipeline: "sqlite:///path" (default) or "sqs://name".
    queue_url: str = "sqlite:///var/queue.db"
    sqs_endpoint_url: str = ""
    queue_max_receives: int = positive(5)  # deliveries of a failing job before its dead letter
    processing: bool = True  # "off": uploads end at stored, nothing is queued
    worker_concurrency: int = positive(2)
    job_lease_seconds: int = positive(60)

    # Scanning: with a clamd, new objects wait in the quarantine until scanned clean.
    clamd_url: str = ""  # unix:///path or tcp://host:port
    clamd_timeout: float = positive_seconds(60.0)
    quarantine_url: str = ""  # default: var/quarantine, or s3://<bucket>/<prefix>-quarantine
    keep_infected: bool = False  # "on": keep infected objects in the quarantine

    # Describing and deriving (gateway/processing/derive.py), in a sandboxed child process.
    thumbnail_sizes: tuple[int, ...] = (320, 1280)
    max_image_pixels: int = positive(50_000_000)
    strip_gps: bool = False  # "on": also remove GPS from JPEG originals (variants never have it)
    sandbox_memory: int = positive(1024 * MiB)
    sandbox_timeout: float = positive_seconds(120.0)
    # Audio (gateway/processing/audio.py): decoding bounds (a file that claims or decodes to
    # more is refused as an audio bomb), the waveform's points, and the Ogg Opus copy made of
    # uncompressed or lossless audio of at least audio_opus_min_bytes (bits per second).
    audio_max_duration: float = positive_seconds(4 * 3600.0)
    audio_max_samples: int = positive(4 * 3600 * 48_000 * 2)  # per channel, times channels
    audio_max_decode_seconds: float = positive_seconds(600.0)  # CPU; plus the sandbox deadline
    audio_waveform_points: int = positive(2000)
    audio_opus_min_bytes: int = 1 * MiB
    audio_opus_mono_bit_rate: int = 64_000
    audio_opus_stereo_bit_rate: int = 96_000

    # Resumable uploads (tus 1.0, /api/tus/).
    tus_max_bytes: int = positive(5 * 1024 * MiB)
    tus_expiry_seconds: int = positive(24 * 3600)  # an unfinished upload ends after this
    tus_lock_seconds: int = positive(60)  # a PATCH's lease on its upload (renewed while it runs)
    tus_max_checksum_chunk: int = positive(64 * MiB)  # a checksummed chunk is held until verified
    cors_origins: tuple[str, ...] = ()  # other origins whose pages may call the API ("*": any)

    # Browsers (gateway/http/api/pages.py): the JWT may also come in this cookie, and then only with
    # its CSRF token (gateway/uploads/csrf.py). The __Host- prefix needs session_cookie_secure on.
    session_cookie: str = "__Host-gateway_session"
    session_cookie_secure: bool = True
    session_cookie_samesite: str = "Lax"  # Lax, Strict or None (None needs secure on)
    csrf_secret: str = field(default="", repr=False)  # default: derived from the JWT key
    redirect_origins: tuple[str, ...] = ()  # where a form's `redirect` may lead (own: always)
    page_direct_min_bytes: int = positive(64 * MiB)  # /upload sends files this big direct to S3

    # Upload tickets (gateway/uploads/tickets.py, docs/tickets.md): what one form post from
    # another site may do, signed (HS256). ticket_secret: the gateway's own ticket key, which
    # POST /api/tickets signs with and which may sign a ticket of any tenant; "": derived from an
    # HS256 jwt_secret (none with RS256). ticket_tenant_keys: "tenant:secret" pairs; a ticket
    # signed with one (JWT header kid "tenant:<tenant>") is valid for that tenant only.
    ticket_secret: str = field(default="", repr=False)
    ticket_tenant_keys: tuple[str, ...] = field(default=(), repr=False)
    ticket_max_seconds: int = positive(TICKET_MAX_SECONDS)  # a ticket's longest life (at most 1 h)

    # Webhooks (Standard Webhooks): media.stored/ready/failed/infected/deleted.
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)  # whsec_<base64>
    webhook_timeout: float = positive_seconds(10.0)
    # Deliveries have their own queue and lane in the worker, so a slow receiver never holds a
    # processing job's slot. "": beside the processing queue (<file>-webhooks.db, sqs://<name>-
    # webhooks). webhook_concurrency: deliveries at once to the endpoint, per worker process.
    webhook_queue_url: str = ""
    webhook_concurrency: int = positive(4)
    # SNS fan-out: every media event published to this topic (attributes event, projectId,
    # tenant, eventId), from the deliveries' queue and lane as webhooks are. "": none.
    sns_topic_arn: str = ""
    sns_endpoint_url: str = ""
    # Bucket notifications pushed over HTTP (a Ceph RGW topic's push-endpoint) to
    # POST /api/s3-events, authenticated by this secret as the HTTP Basic password. "": off.
    s3_events_secret: str = field(default="", repr=False)
    # Live status: open /api/media/<id>/events streams per worker process.
    max_event_streams: int = positive(100)

    # Quotas (0: none): what one project, and one tenant in all, may hold (pending uploads at
    # their promised size, and streamed uploads in flight, included). 413 quota_exceeded.
    quota_project_bytes: int = 0
    quota_project_files: int = 0
    quota_tenant_bytes: int = 0
    quota_tenant_files: int = 0
    # A streamed upload's reservation lives this long past its last activity (renewed as its
    # bytes arrive); one left by a process that died ends then.
    quota_reservation_seconds: int = positive(300)

    idempotency_ttl: int = positive(24 * 3600)
    idempotency_lock_timeout: int = positive(3600)
    log_level: str = "INFO"
    # Prometheus metrics at /metrics, only on this extra listener (host:port) of gunicorn, never
    # on the public one; the processing worker serves its own on worker_metrics_bind. "": off.
    metrics_bind: str = ""
    worker_metrics_bind: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _env_name(f.name)
            if name in environ:
                values[f.name] = _parse(f, environ[name])
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"{_env_name(name)}: {why}")

        for f in fields(self):
            rule = f.metadata.get("rule")
            if rule == "positive" and getattr(self, f.name) <= 0:
                fail(f.name, "must be a positive number")
            elif rule == "positive seconds" and getattr(self, f.name) <= 0:
                fail(f.name, "must be a positive number of seconds")
            elif f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                fail(f.name, "must be on or off")
        if self.s3_integrity not in ("auto", "md5", "crc32c"):
            fail("s3_integrity", "must be auto, md5 or crc32c")
        if self.s3_part_size < S3_MIN_PART_SIZE:
            fail("s3_part_size", f"must be at least {S3_MIN_PART_SIZE} (S3's minimum part size)")
        if self.direct_single_put_max > 5 * 1024 * MiB:
            fail("direct_single_put_max", "S3 accepts at most 5 GiB in one PUT")
        if self.direct_part_size < S3_MIN_PART_SIZE:
            fail(
                "direct_part_size", f"must be at least {S3_MIN_PART_SIZE} (S3's minimum part size)"
            )
        if self.direct_max_files > 97:
            fail("direct_max_files", "at most 97 (one DynamoDB transaction, with its counters)")
        if self.max_files > 95:
            fail("max_files", "at most 95 (one DynamoDB transaction, with its answer and counters)")
        if self.shutdown_delay < 0 or self.shutdown_upload_grace < 0:
            fail(
                "shutdown_delay" if self.shutdown_delay < 0 else "shutdown_upload_grace",
                "must not be negative",
            )
        if self.body_min_rate < 0:
            fail("body_min_rate", "must not be negative (0: no rate check)")
        if self.body_min_rate and self.body_rate_grace <= 0:
            fail("body_rate_grace", "must be a positive number of seconds")
        if self.session_cookie_samesite not in ("Lax", "Strict", "None"):
            fail("session_cookie_samesite", "must be Lax, Strict or None")
        if not self.session_cookie_secure and (
            self.session_cookie.startswith(("__Host-", "__Secure-"))
            or self.session_cookie_samesite == "None"
        ):
            fail("session_cookie_secure", "must be on with a __Host- name or SameSite=None")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.session_cookie.removeprefix("__Host-")):
            fail("session_cookie", "must be 1-64 letters, digits, '_', '.' or '-'")
        for origin in self.redirect_origins:
            if origin_of(origin) != origin.lower():
                fail("redirect_origins", f"{origin!r} is not an origin (scheme://host[:port])")
        for origin in self.cors_origins:
            if origin != "*" and ("*" in origin or origin_of(origin) != origin.lower()):
                fail("cors_origins", f"{origin!r}: an origin (scheme://host[:port]), or * alone")
        self._validate_tickets(fail)
        if not self.thumbnail_sizes or any(s < 16 or s > 4096 for s in self.thumbnail_sizes):
            fail("thumbnail_sizes", "one or more sizes in pixels, 16-4096 each")
        if not 16 <= self.audio_waveform_points <= 100_000:
            fail("audio_waveform_points", "must be 16-100000")
        if self.audio_opus_min_bytes < 0:
            fail("audio_opus_min_bytes", "must not be negative (0: every lossless file)")
        for name in ("audio_opus_mono_bit_rate", "audio_opus_stereo_bit_rate"):
            if not 6_000 <= getattr(self, name) <= 510_000:
                fail(name, "must be 6000-510000 bits per second (Opus's range)")
        # Also without scanning: failed media are withheld there.
        if (urlparse(self.storage_url).scheme == "s3") != (
            urlparse(self.effective_quarantine_url).scheme == "s3"
        ):
            fail("quarantine_url", "must be on the same kind of storage as the media")
        if self.clamd_url:
            clamd = urlparse(self.clamd_url)
            if not (clamd.scheme == "unix" and clamd.path) and not (
                clamd.scheme == "tcp" and clamd.hostname and clamd.port
            ):
                fail("clamd_url", "must be unix:///path/to/clamd.sock or tcp://host:port")
            if self.cdn_base_url and not urlparse(self.storage_url).path.strip("/"):
                fail(
                    "storage_url",
                    "with scanning and a CDN, needs a prefix (the CDN's origin"
                    " path) so that the quarantine is out of the CDN's reach",
                )
        if self.webhook_url:
            if urlparse(self.webhook_url).scheme not in ("http", "https"):
                fail("webhook_url", "must be an http(s) URL")
            if not self.webhook_secret.startswith("whsec_"):
                fail("webhook_secret", "required with a webhook URL: whsec_<base64 secret>")
        if self.sns_topic_arn and not _SNS_ARN_RE.fullmatch(self.sns_topic_arn):
            fail("sns_topic_arn", "must be a topic ARN: arn:aws:sns:<region>:<account>:<name>")
        if self.s3_events_secret and not _EVENTS_SECRET_RE.fullmatch(self.s3_events_secret):
            # never the value: it is a secret
            fail("s3_events_secret", "at least 32 of A-Z a-z 0-9 . _ ~ - (it goes in a URL)")
        for name in ("quota_project_bytes", "quota_project_files", "quota_tenant_bytes",
                     "quota_tenant_files"):  # fmt: skip
            if getattr(self, name) < 0:
                fail(name, "must not be negative (0: no quota)")
        if self.jwt_leeway < 0 or self.trusted_proxies < 0:
            fail("jwt_leeway" if self.jwt_leeway < 0 else "trusted_proxies", "must not be negative")

        for name in ("metrics_bind", "worker_metrics_bind"):
            if getattr(self, name) and _host_port(getattr(self, name)) is None:
                fail(name, "must be host:port, e.g. 127.0.0.1:9464")

        storage = urlparse(self.storage_url)
        if storage.scheme == "s3":
            if not storage.netloc:
                fail("storage_url", "s3:// URL needs a bucket: s3://bucket/prefix")
        elif storage.scheme not in ("", "file"):
            fail("storage_url", "must be s3://bucket/prefix or a local directory")
        for name in ("queue_url", "webhook_queue_url"):
            url = getattr(self, name)
            queue = urlparse(url)
            if not url and name == "webhook_queue_url":
                continue  # beside the processing queue
            if queue.scheme == "sqlite":
                if not url.startswith("sqlite:///") or len(url) <= 10:
                    fail(name, "sqlite URL must look like sqlite:///path/to/queue.db")
            elif queue.scheme == "sqs":
                if not queue.netloc:
                    fail(name, "sqs URL must name a queue: sqs://name")
            else:
                fail(name, "must be sqlite:///path or sqs://name")
        if self.effective_webhook_queue_url == self.queue_url:
            fail("webhook_queue_url", "must not be the processing queue (GATEWAY_QUEUE_URL)")
        records = urlparse(self.records_url)
        if records.scheme == "sqlite":
            if not self.records_url.startswith("sqlite:///") or len(self.records_url) <= 10:
                fail("records_url", "sqlite URL must look like sqlite:///path/to/file.db")
        elif records.scheme == "dynamodb":
            if not records.netloc:
                fail("records_url", "dynamodb URL must name a table: dynamodb://table")
        else:
            fail("records_url", "must be sqlite:///path or dynamodb://table")

        algorithm = self.effective_jwt_algorithm
        if self.jwt_secret and self.jwt_public_key:
            fail("jwt_secret", "set either GATEWAY_JWT_SECRET or GATEWAY_JWT_PUBLIC_KEY, not both")
        if algorithm == "HS256":
            if len(self.jwt_secret.encode()) < 32:
                fail("jwt_secret", "required for HS256, at least 32 bytes")
        elif algorithm == "RS256":
            if not self.jwt_public_key_pem.startswith("-----BEGIN"):
                fail("jwt_public_key", "required for RS256: a PEM public key, or a path to one")
        else:
            fail("jwt_algorithm", "must be HS256 or RS256")

        for pattern in self.allowed_types:
            major, _, minor = pattern.partition("/")
            if pattern != "*/*" and (not major or not minor or "*" in major):
                fail("allowed_types", f"{pattern!r} is not a MIME type, type/* or */*")
        if self.cdn_base_url and urlparse(self.cdn_base_url).scheme not in ("http", "https"):
            fail("cdn_base_url", "must be an http(s) URL")
        if self.public_base_url and urlparse(self.public_base_url).scheme not in ("http", "https"):
            fail("public_base_url", "must be an http(s) URL")
        if bool(self.cloudfront_key_id) != bool(self.cloudfront_private_key):
            fail(
                "cloudfront_key_id", "CloudFront signing needs both the key id and the private key"
            )
        if self.cloudfront_key_id and not self.cdn_base_url:
            fail("cdn_base_url", "required when CloudFront URL signing is configured")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            fail("log_level", "must be DEBUG, INFO, WARNING or ERROR")

    def _validate_tickets(self, fail: Callable[[str, str], None]) -> None:
        if self.ticket_secret and len(self.ticket_secret.encode()) < 32:
            fail("ticket_secret", "must be at least 32 bytes")
        tenants: set[str] = set()
        for entry in self.ticket_tenant_keys:
            tenant, colon, secret = entry.partition(":")
            if not colon or not _TENANT_RE.fullmatch(tenant) or len(secret.encode()) < 32:
                # never the value: it holds a secret
                fail("ticket_tenant_keys", "each entry must be tenant:secret, secret >= 32 bytes")
            if tenant in tenants:
                fail("ticket_tenant_keys", f"tenant {tenant!r} has more than one key")
            tenants.add(tenant)
        if self.ticket_max_seconds > TICKET_MAX_SECONDS:
            fail("ticket_max_seconds", f"at most {TICKET_MAX_SECONDS} (a ticket lives 1 h at most)")
        if self.jwt_audience == TICKET_AUDIENCE:
            fail("jwt_audience", f"must not be {TICKET_AUDIENCE!r}, the upload tickets' audience")

    @property
    def ticket_key(self) -> bytes | None:
        """The gateway's own ticket key: GATEWAY_TICKET_SECRET, else derived from an HS256
        JWT secret (a key of its own: a bearer token's signature never verifies as a ticket's);
        None with RS256 and no ticket secret (a public key must never become a signing key)."""
        if self.ticket_secret:
            return self.ticket_secret.encode()
        if self.effective_jwt_algorithm != "HS256":
            return None
        return hmac.new(self.jwt_secret.encode(), b"upload-gateway ticket", hashlib.sha256).digest()

    @property
    def ticket_tenant_key_map(self) -> dict[str, bytes]:
        """GATEWAY_TICKET_TENANT_KEYS as tenant -> key."""
        pairs = (entry.partition(":") for entry in self.ticket_tenant_keys)
        return {tenant: secret.encode() for tenant, _, secret in pairs}

    @property
    def effective_quarantine_url(self) -> str:
        if self.quarantine_url:
            return self.quarantine_url
        storage = urlparse(self.storage_url)
        if storage.scheme == "s3":
            prefix = storage.path.strip("/")
            return f"s3://{storage.netloc}/{prefix + '-' if prefix else ''}quarantine"
        root = Path(storage.path if storage.scheme == "file" else self.storage_url)
        return str(root.parent / "quarantine")

    @property
    def sns_region(self) -> str:
        """The SNS topic's region (from its ARN), else the S3 region."""
        region = self.sns_topic_arn.split(":")[3] if self.sns_topic_arn else ""
        return region or self.s3_region

    @property
    def delivers(self) -> bool:
        """Whether events are delivered anywhere (a webhook, an SNS topic): the deliveries'
        queue and lane exist."""
        return bool(self.webhook_url or self.sns_topic_arn)

    @property
    def effective_webhook_queue_url(self) -> str:
        """Where deliveries (webhooks, SNS publications) wait: the setting, else next to the
        processing queue."""
        if self.webhook_queue_url:
            return self.webhook_queue_url
        if self.queue_url.startswith("sqs://"):
            return f"{self.queue_url.rstrip('/')}-webhooks"
        stem, dot, extension = self.queue_url.rpartition(".")
        if not dot or "/" in extension:
            return f"{self.queue_url}-webhooks"
        return f"{stem}-webhooks.{extension}"

    @property
    def effective_jwt_algorithm(self) -> str:
        if self.jwt_algorithm:
            return self.jwt_algorithm.upper()
        return "RS256" if self.jwt_public_key else "HS256"

    @property
    def jwt_public_key_pem(self) -> str:
        return _pem_or_file(self.jwt_public_key)

    @property
    def jwt_private_key_pem(self) -> str:
        return _pem_or_file(self.jwt_private_key)

    @property
    def cloudfront_private_key_pem(self) -> str:
        return _pem_or_file(self.cloudfront_private_key)

    @property
    def metrics_port(self) -> int | None:
        """The port of the metrics listener, when there is one."""
        bound = _host_port(self.metrics_bind) if self.metrics_bind else None
        return bound[1] if bound else None

    @property
    def worker_metrics_address(self) -> tuple[str, int] | None:
        """Where ``flask worker`` serves its metrics, when it does."""
        return _host_port(self.worker_metrics_bind) if self.worker_metrics_bind else None

    @property
    def effective_part_size(self) -> int:
        """The configured part size, raised so that a max-size file fits in 10,000 parts."""
        needed = -(-self.max_upload_bytes // S3_MAX_PARTS)
        return max(self.s3_part_size, needed)

    @property
    def effective_s3_integrity(self) -> str:
        """``auto``: crc32c on AWS S3 itself (no endpoint, or one under amazonaws.com), which
        refuses a wrong CRC32C; md5 on any other endpoint, whose checks are not known (Ceph
        RGW stores a wrong CRC32C, moto any checksum)."""
        if self.s3_integrity != "auto":
            return self.s3_integrity
        host = (urlparse(self.s3_endpoint_url).hostname or "") if self.s3_endpoint_url else ""
        aws = not self.s3_endpoint_url or host == "amazonaws.com" or host.endswith(".amazonaws.com")
        return "crc32c" if aws else "md5"

    def replace(self, **changes: Any) -> Settings:
        settings = dataclasses.replace(self, **changes)
        settings.validate()
        return settings


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lowercased; None for anything else."""
    try:
        parts = urlparse(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _pem_or_file(value: str) -> str:
    if not value or value.lstrip().startswith("-----BEGIN"):
        return value.strip().replace("\\n", "\n")
    path = Path(value)
    return path.read_text().strip() if path.is_file() else value


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    name = _env_name(f.name)
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            if raw.strip() not in ("on", "off"):
                raise ConfigError(f"{name}: must be on or off, not {raw!r}")
            return raw.strip() == "on"
        if kind == "int":
            return int(raw.strip())
        if kind == "float":
            return float(raw.strip())
        if kind.startswith("tuple[int"):
            return tuple(int(item) for item in raw.split(",") if item.strip())
        if kind.startswith("tuple"):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a valid {kind}") from None
    return raw.strip()
