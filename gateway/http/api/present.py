"""How a media record looks on the wire (camelCase, with its public URL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import request

from gateway.http.api import services
from gateway.media.lifecycle import Status
from gateway.media.records import MediaRecord, TusUpload
from gateway.services import Services


def upload_seconds(record: MediaRecord) -> float:
    """From the record's creation (tus creation, direct initiate) to now."""
    created = datetime.fromisoformat(record.created_at)
    return max(0.0, (datetime.now(UTC) - created).total_seconds())


def _url(svc: Services, record: MediaRecord, key: str) -> str | None:
    """A public URL only for what may be served: never before a clean scan."""
    if not record.servable:
        return None
    return svc.urls.url(key, request_base=request.host_url)


def media_json(record: MediaRecord) -> dict[str, Any]:
    svc = services()
    held = svc.storage.holding
    where = held.store if record.quarantined and held is not None else svc.store
    view: dict[str, Any] = {
        "mediaId": record.media_id,
        "projectId": record.project_id,
        "tenant": record.tenant or None,
        "owner": record.owner,
        "originalName": record.original_name,
        "fileType": record.file_type,
        "contentType": record.mime_type,
        "s3Key": where.full_key(record.s3_key),
        "url": _url(svc, record, record.s3_key),
        "size": record.size,
        "sha256": record.sha256 or None,
        "sha256State": record.sha256_state.value,
        "metadata": record.metadata,
        "status": record.status.value,
        "stage": record.stage or None,
        "variants": [
            {
                "name": v.name,
                "url": _url(svc, record, v.key),
                "contentType": v.content_type,
                "width": v.width,
                "height": v.height,
                "size": v.size,
            }
            for v in record.variants
        ],
        "properties": record.properties,
        "createdAt": record.created_at,
        "version": record.version,
    }
    if isinstance(record.upload, TusUpload):
        view["upload"] = {
            "protocol": "tus",
            "offset": record.upload.offset,
            "length": record.upload.length,
            "expiresAt": record.upload.expires_at,
        }
    if record.reason:
        view["reason"] = record.reason
        if record.status in (Status.FAILED, Status.INFECTED):
            view["error"] = record.reason
    return view
