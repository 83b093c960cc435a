"""Direct-to-S3 uploads: initiate (presigned URLs), complete (verified), abort, status, parts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from gateway import errors
from gateway.http.api import direct_requests as read
from gateway.http.api import json_body, services
from gateway.http.api.present import media_json, upload_seconds
from gateway.http.api.spec import (
    BEARER,
    ERROR_RESPONSES,
    JSON,
    NULLABLE_STRING,
    UPLOAD_ID,
    VISIBLE_STATUSES,
    Described,
    Schema,
    json_response,
    named_response,
    query_param,
    ref,
)
from gateway.http.auth import authenticate
from gateway.http.weblog import note, note_upload
from gateway.media.lifecycle import Status, is_visible
from gateway.media.records import DirectUpload, MediaRecord
from gateway.storage import PartInfo
from gateway.storage.presign import PartUrl
from gateway.uploads.direct import DirectUploadService, Initiated, Signed

bp = Blueprint("direct", __name__)


def _service() -> DirectUploadService:
    direct = services().direct
    if direct is None:
        raise errors.DirectUploadsUnavailable()
    return direct


def upload_json(record: MediaRecord, *, parts: list[PartInfo] | None = None) -> dict[str, Any]:
    upload = record.upload
    assert isinstance(upload, DirectUpload)
    view: dict[str, Any] = {
        "uploadId": record.media_id,
        "mediaId": record.media_id,
        "status": record.status.value,
        "method": upload.method,
        "projectId": record.project_id,
        "filename": record.original_name,
        "contentType": record.mime_type,
        "size": record.size,
        "s3Key": services().store.full_key(record.s3_key),
        "expiresAt": upload.expires_at,
    }
    if record.reason:
        view["reason"] = record.reason
    if parts is not None:
        view["partsReceived"] = [
            {"partNumber": p.number, "size": p.size, "etag": p.etag} for p in parts
        ]
        view["bytesReceived"] = sum(p.size for p in parts)
    if is_visible(record.status):
        view["media"] = media_json(record)
        view["url"] = view["media"]["url"]
    return view


def _instructions(started: Initiated) -> dict[str, Any]:
    """How the client sends the bytes: the presigned PUT and POST of a single upload, the
    part size and count of a multipart one with its first page of part URLs, the key for
    signRequests."""
    upload = started.record.upload
    assert isinstance(upload, DirectUpload)
    view: dict[str, Any] = {}
    if started.put is not None:
        view["put"] = {"url": started.put.url, "headers": dict(started.put.headers)}
    if started.post is not None:
        view["post"] = {"url": started.post.url, "fields": dict(started.post.fields)}
    if started.key is not None:
        view["key"] = started.key
    if upload.method == "multipart":
        view["multipart"] = {"partSize": upload.part_size, "partCount": upload.part_count}
        if started.parts is not None:
            view["multipart"]["parts"] = _parts_json(started.parts)
    return view


def _parts_json(parts: tuple[PartUrl, ...] | list[PartUrl]) -> list[dict[str, Any]]:
    return [{"partNumber": p.number, "size": p.size, "url": p.url} for p in parts]


def _signed_json(signed: Signed) -> dict[str, Any]:
    view: dict[str, Any] = {"url": signed.url, "headers": dict(signed.headers)}
    if signed.key is not None:
        view["key"] = signed.key
    return view


@bp.post("/api/uploads/initiate")
def initiate() -> tuple[Response, int]:
    principal = authenticate()
    svc = _service()
    batch = read.initiate(json_body(required=True))
    note(user=principal.subject, project=batch.project_id, files=len(batch.files))
    note_upload("direct")
    started = svc.initiate(principal, batch)
    note_upload("direct", outcome="initiated")
    uploads = [{**upload_json(item.record), **_instructions(item)} for item in started]
    return jsonify(success=True, uploads=uploads), 201


@bp.post("/api/uploads/sign")
def sign() -> Response:
    """One S3 request of a signRequests upload, presigned (Uppy's @uppy/aws-s3 signRequest)."""
    principal = authenticate()
    signed = _service().sign(principal, read.sign(json_body(required=True)))
    return jsonify(_signed_json(signed))


@bp.get("/api/uploads/<upload_id>")
def status(upload_id: str) -> Response:
    principal = authenticate()
    svc = _service()
    record = svc.get(principal, upload_id)
    return jsonify(success=True, **upload_json(record, parts=svc.received(record)))


@bp.get("/api/uploads/<upload_id>/parts")
def parts(upload_id: str) -> Response:
    """More presigned part URLs: ``?first=<part number>&count=<at most a page>``."""
    principal = authenticate()
    count = request.args.get("count")
    try:
        first = int(request.args.get("first", "1"))
        per_page = int(count) if count is not None else None
    except ValueError:
        raise errors.InvalidPartRange("first and count must be integers.") from None
    urls = _service().part_urls(principal, upload_id, first=first, count=per_page)
    return jsonify(success=True, uploadId=upload_id, parts=_parts_json(urls))


@bp.post("/api/uploads/<upload_id>/complete")
def complete(upload_id: str) -> Response:
    principal = authenticate()
    note_upload("direct")
    svc = _service()
    record = svc.complete(principal, upload_id, read.claimed_parts(json_body(required=False)))
    note(user=principal.subject, project=record.project_id, outcome=record.status.value)
    note_upload("direct", bytes=record.size or 0, seconds=upload_seconds(record))
    if record.status is Status.REJECTED:
        raise errors.UploadRejected(record.reason)
    return jsonify(success=True, **upload_json(record))


@bp.post("/api/uploads/<upload_id>/abort")
def abort(upload_id: str) -> Response:
    principal = authenticate()
    record = _service().abort(principal, upload_id)
    return jsonify(success=True, **upload_json(record))


def api_description() -> Described:
    return Described(
        paths={
            "/api/uploads/initiate": {
                "post": {
                    "summary": "Direct-to-S3: promise files, get presigned URLs (S3 mode only)",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": ref("Initiate")}},
                    },
                    "responses": {
                        "201": json_response(
                            {
                                "type": "object",
                                "required": ["success", "uploads"],
                                "properties": {
                                    "success": {"const": True},
                                    "uploads": {"type": "array", "items": ref("DirectUpload")},
                                },
                            },
                            "Pending uploads with how to send each.",
                        ),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/uploads/sign": {
                "post": {
                    "summary": "Presign one S3 request of a signRequests upload (@uppy/aws-s3)",
                    "description": "PutObject to a single upload's key; CreateMultipartUpload, "
                    "UploadPart, ListParts, CompleteMultipartUpload, AbortMultipartUpload of a "
                    "multipart one. The first uploadId seen is the upload's; complete still "
                    "checks what S3 holds.",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _SIGN_REQUEST}},
                    },
                    "responses": {
                        "200": json_response(
                            _SIGNED_REQUEST, "The URL and the headers it was signed with."
                        ),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/uploads/{uploadId}": {
                "get": {
                    "summary": "A direct upload's status and the parts S3 holds so far",
                    "security": BEARER,
                    "parameters": [UPLOAD_ID],
                    "responses": {
                        "200": named_response("DirectUpload", "The upload."),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/uploads/{uploadId}/parts": {
                "get": {
                    "summary": "More presigned part URLs of a pending multipart upload",
                    "security": BEARER,
                    "parameters": [
                        UPLOAD_ID,
                        query_param("first", {"type": "integer"}, "The first part number (1)."),
                        query_param("count", {"type": "integer"}, "How many (at most a page)."),
                    ],
                    "responses": {
                        "200": json_response(
                            {
                                "type": "object",
                                "required": ["success", "uploadId", "parts"],
                                "properties": {
                                    "success": {"const": True},
                                    "uploadId": {"type": "string"},
                                    "parts": {"type": "array", "items": ref("PartUrl")},
                                },
                            },
                            "Part URLs.",
                        ),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/uploads/{uploadId}/complete": {
                "post": {
                    "summary": "Check what S3 holds and store it (or reject it: 422)",
                    "security": BEARER,
                    "parameters": [UPLOAD_ID],
                    "requestBody": {
                        "required": False,
                        "content": {JSON: {"schema": ref("Complete")}},
                    },
                    "responses": {
                        "200": named_response("DirectUpload", "Stored."),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/uploads/{uploadId}/abort": {
                "post": {
                    "summary": "Abort a pending direct upload and remove what was sent",
                    "security": BEARER,
                    "parameters": [UPLOAD_ID],
                    "responses": {
                        "200": named_response("DirectUpload", "Aborted."),
                        **ERROR_RESPONSES,
                    },
                }
            },
        },
        schemas={
            "DirectUpload": _DIRECT_UPLOAD,
            "PartUrl": _PART_URL,
            "Initiate": _INITIATE,
            "Complete": _COMPLETE,
        },
    )


# What ``upload_json`` answers, with initiate's instructions (put, post, multipart).
_DIRECT_UPLOAD: Schema = {
    "type": "object",
    "required": [
        "uploadId",
        "mediaId",
        "status",
        "method",
        "projectId",
        "filename",
        "contentType",
        "size",
        "s3Key",
        "expiresAt",
    ],
    "properties": {
        "success": {"const": True},
        "uploadId": {"type": "string"},
        "mediaId": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "stored", "rejected", "aborted", "expired", *VISIBLE_STATUSES],
        },
        "method": {"type": "string", "enum": ["put", "multipart"]},
        "projectId": {"type": "string"},
        "filename": {"type": "string"},
        "contentType": {"type": "string"},
        "size": {"type": ["integer", "null"]},
        "s3Key": {"type": "string"},
        "expiresAt": {"type": "string"},
        "reason": {"type": "string"},
        "partsReceived": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["partNumber", "size", "etag"],
                "properties": {
                    "partNumber": {"type": "integer"},
                    "size": {"type": "integer"},
                    "etag": {"type": "string"},
                },
            },
        },
        "bytesReceived": {"type": "integer"},
        "key": {"type": "string", "description": "signRequests: the S3 key to send to."},
        "media": ref("Media"),
        "url": NULLABLE_STRING,
        "put": {
            "type": "object",
            "properties": {"url": {"type": "string"}, "headers": {"type": "object"}},
        },
        "post": {
            "type": "object",
            "properties": {"url": {"type": "string"}, "fields": {"type": "object"}},
        },
        "multipart": {
            "type": "object",
            "properties": {
                "partSize": {"type": "integer"},
                "partCount": {"type": "integer"},
                "parts": {"type": "array", "items": ref("PartUrl")},
            },
        },
    },
}
_PART_URL: Schema = {
    "type": "object",
    "required": ["partNumber", "size", "url"],
    "properties": {
        "partNumber": {"type": "integer"},
        "size": {"type": "integer"},
        "url": {"type": "string"},
    },
}
_INITIATE: Schema = {
    "type": "object",
    "required": ["projectId", "files"],
    "properties": {
        "projectId": {"type": "string"},
        "signRequests": {
            "type": "boolean",
            "description": "The client sends every S3 request itself, each signed "
            "by POST /api/uploads/sign (Uppy's @uppy/aws-s3 signRequest); it creates "
            "the multipart upload.",
        },
        "files": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["filename", "contentType", "size"],
                "properties": {
                    "filename": {"type": "string"},
                    "contentType": {"type": "string"},
                    "size": {"type": "integer", "minimum": 1},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
        },
    },
}
_COMPLETE: Schema = {
    "type": "object",
    "properties": {
        "parts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["partNumber", "etag"],
                "properties": {"partNumber": {"type": "integer"}, "etag": {"type": "string"}},
            },
        }
    },
}
_SIGN_REQUEST: Schema = {
    "type": "object",
    "required": ["method", "key"],
    "properties": {
        "method": {"enum": ["PUT", "POST", "GET", "DELETE"]},
        "key": {"type": "string"},
        "uploadId": {"type": "string"},
        "partNumber": {"type": "integer"},
        "contentType": {"type": "string"},
        "expiresIn": {"type": "integer"},
    },
}
_SIGNED_REQUEST: Schema = {
    "type": "object",
    "required": ["url", "headers"],
    "properties": {
        "url": {"type": "string"},
        "key": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
