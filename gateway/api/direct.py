"""Direct-to-S3 uploads: initiate (presigned URLs), complete (verified), abort, status."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..auth import authenticate
from ..errors import BadRequest, TooLarge, Unprocessable
from ..records import MediaRecord
from ..services import services
from ..weblog import note
from .present import media_json

bp = Blueprint("direct", __name__)
MAX_JSON_BYTES = 256 * 1024


def _json_body(*, required: bool) -> Any:
    """The JSON body, at most MAX_JSON_BYTES whether sized or chunked (cut as it grows)."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge("The JSON body is too large.")
    # werkzeug limits a chunked stream to this (a sized one to its Content-Length) but ends
    # it silently at the limit, so read one byte past the allowance to tell "too large" apart.
    request.max_content_length = MAX_JSON_BYTES + 1
    data = bytearray()
    try:
        while len(data) <= MAX_JSON_BYTES:
            chunk = request.stream.read(MAX_JSON_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except RequestEntityTooLarge:
        raise TooLarge("The JSON body is too large.") from None
    if len(data) > MAX_JSON_BYTES:
        raise TooLarge("The JSON body is too large.")
    if not data and not required:
        return {}  # no body (none sent, or an empty chunked one)
    try:  # bad JSON is answered, never ignored
        body = json.loads(data) if request.is_json else None
    except ValueError:
        body = None
    if body is None:
        raise BadRequest("The body must be JSON (Content-Type: application/json).",
                         code="invalid_json")
    return body


def upload_json(record: MediaRecord, *, parts: list | None = None) -> dict[str, Any]:
    upload = record.upload
    view: dict[str, Any] = {
        "uploadId": record.media_id, "mediaId": record.media_id, "status": record.status,
        "method": upload.get("method"), "projectId": record.project_id,
        "filename": record.original_name, "contentType": record.mime_type, "size": record.size,
        "s3Key": record.s3_key, "expiresAt": upload.get("expiresAt")}
    if "reason" in upload:
        view["reason"] = upload["reason"]
    if parts is not None:
        view["partsReceived"] = [{"partNumber": p.number, "size": p.size, "etag": p.etag}
                                 for p in parts]
        view["bytesReceived"] = sum(p.size for p in parts)
    if record.status == "stored":
        view["media"] = media_json(record)
        view["url"] = view["media"]["url"]
    return view


@bp.post("/api/uploads/initiate")
def initiate():
    principal = authenticate()
    svc = services().direct
    project_id, promises = svc.parse_promises(_json_body(required=True))
    note(user=principal.subject, project=project_id, files=len(promises))
    started = svc.initiate(principal, project_id, promises)
    uploads = [{**upload_json(item.record), **item.instructions} for item in started]
    return jsonify(success=True, uploads=uploads), 201


@bp.get("/api/uploads/<upload_id>")
def status(upload_id: str):
    svc = services().direct
    record = svc.get(authenticate(), upload_id)
    return jsonify(success=True, **upload_json(record, parts=svc.received(record)))


@bp.post("/api/uploads/<upload_id>/complete")
def complete(upload_id: str):
    principal = authenticate()
    record = services().direct.complete(principal, upload_id, _json_body(required=False))
    note(user=principal.subject, project=record.project_id, outcome=record.status)
    if record.status == "rejected":
        raise Unprocessable(record.upload.get("reason"), code="upload_rejected")
    return jsonify(success=True, **upload_json(record))


@bp.post("/api/uploads/<upload_id>/abort")
def abort(upload_id: str):
    record = services().direct.abort(authenticate(), upload_id)
    return jsonify(success=True, **upload_json(record))
