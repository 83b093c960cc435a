"""How a media record looks on the wire (camelCase, with its public URL)."""

from __future__ import annotations

from typing import Any

from flask import request

from ..records import MediaRecord
from . import services


def media_json(record: MediaRecord) -> dict[str, Any]:
    svc = services()
    view: dict[str, Any] = {
        "mediaId": record.media_id,
        "projectId": record.project_id,
        "tenant": record.tenant or None,
        "owner": record.owner,
        "originalName": record.original_name,
        "fileType": record.file_type,
        "contentType": record.mime_type,
        "s3Key": svc.store.full_key(record.s3_key),
        "url": svc.urls.url(record.s3_key, request_base=request.host_url),
        "size": record.size,
        "sha256": record.sha256,
        "metadata": record.metadata,
        "status": record.status.value,
        "createdAt": record.created_at,
    }
    if record.reason:
        view["reason"] = record.reason
    return view
