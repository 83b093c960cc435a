"""``flask check``'s probe of an S3 store: what it verifies, found by sending deliberately wrong
checksums with a small body to a scratch key (deleted afterwards), whether its ETags are MD5s,
how the gateway addresses it, and the bucket's CORS and notification configurations. What the
gateway concludes from it is gateway/storage/integrity.py's ``report``."""

from __future__ import annotations

import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.storage.integrity import DIGEST_ERRORS, MD5, Probe, etag_holds, sums
from gateway.storage.s3 import S3ObjectStore, translate
from gateway.storage.s3_requests import TRANSPORT_ERRORS

SCRATCH = ".gateway-check"
ACTION = "probing the store"


def probe(store: S3ObjectStore) -> Probe:
    key = store.full_key(f"{SCRATCH}/{uuid.uuid4().hex}")
    body = f"upload-gateway check {key}".encode()
    wrong = sums(body + b"!", MD5).headers  # of other bytes: a store that verifies refuses them
    try:
        md5 = _refused(store, key, body, {"Content-MD5": wrong["Content-MD5"]})
        crc = _refused(store, key, body, {"x-amz-checksum-crc32c": wrong["x-amz-checksum-crc32c"]})
        etag = _put(store, key, body, {})
    finally:
        _delete(store, key)
    return Probe(
        verifies_md5=md5,
        verifies_crc32c=crc,
        etag_is_md5=etag_holds(etag, sums(body, MD5)),
        addressing=_addressing(store),
        bucket_url=store.requests.bucket_url,
        cors=_cors(store),
        notifications=_notifications(store),
    )


def _put(store: S3ObjectStore, key: str, body: bytes, headers: dict[str, str]) -> str:
    try:
        return store.requests.put_object(key, body, headers)
    except (ClientError, *TRANSPORT_ERRORS) as exc:
        raise translate(exc, ACTION) from exc


def _refused(store: S3ObjectStore, key: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether the store refuses ``body`` sent with ``headers`` (checksums of other bytes)."""
    try:
        store.requests.put_object(key, body, headers)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in DIGEST_ERRORS or code in ("InvalidRequest", "400"):
            return True
        raise translate(exc, ACTION) from exc
    except TRANSPORT_ERRORS as exc:
        raise translate(exc, ACTION) from exc
    return False


def _delete(store: S3ObjectStore, key: str) -> None:
    try:
        store.client.delete_object(Bucket=store.bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, f"deleting the probe's scratch object {key}") from exc


def _addressing(store: S3ObjectStore) -> str:
    path_style = store.requests.bucket_url.rstrip("/").endswith(f"/{store.bucket}")
    return "path-style" if path_style else "virtual-hosted"


def _cors(store: S3ObjectStore) -> tuple[str, ...] | None:
    try:
        rules: list[dict[str, Any]] = store.client.get_bucket_cors(Bucket=store.bucket).get(
            "CORSRules", []
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchCORSConfiguration":
            return None
        raise translate(exc, "reading the bucket's CORS") from exc
    except BotoCoreError as exc:
        raise translate(exc, "reading the bucket's CORS") from exc
    return tuple(
        f"{', '.join(r.get('AllowedMethods', []))} from {', '.join(r.get('AllowedOrigins', []))}"
        f"; exposes {', '.join(r.get('ExposeHeaders', [])) or 'no header'}"
        for r in rules
    )


KINDS = {
    "QueueConfigurations": ("queue", "QueueArn"),
    "TopicConfigurations": ("topic", "TopicArn"),
    "LambdaFunctionConfigurations": ("function", "LambdaFunctionArn"),
}


def _notifications(store: S3ObjectStore) -> tuple[str, ...]:
    try:
        config = store.client.get_bucket_notification_configuration(Bucket=store.bucket)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "reading the bucket's notifications") from exc
    lines = []
    for field, (kind, arn) in KINDS.items():
        for item in config.get(field, []):
            rules = item.get("Filter", {}).get("Key", {}).get("FilterRules", [])
            where = " ".join(f"{r['Name'].lower()}={r['Value']}" for r in rules)
            events = ", ".join(item.get("Events", []))
            target = f"{events} to {kind} {item.get(arn, '')}"
            lines.append(target + (f" ({where})" if where else ""))
    if config.get("EventBridgeConfiguration") is not None:
        lines.append("every event to EventBridge")
    return tuple(lines)
