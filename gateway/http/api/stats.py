"""GET /api/stats: a project's files and bytes by type and status, from the record stores'
counters (kept in the same write as every record; never counted by scanning)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from gateway import errors
from gateway.http.api import services
from gateway.http.api.spec import (
    BEARER,
    ERROR_RESPONSES,
    NULLABLE_STRING,
    Described,
    named_response,
    query_param,
    ref,
)
from gateway.http.auth import authenticate
from gateway.media.lifecycle import VISIBLE
from gateway.media.naming import check_project_id
from gateway.uploads.sniff import FILE_TYPES

bp = Blueprint("stats", __name__)
FILE_TYPE_NAMES = [*FILE_TYPES, "other"]


def _add(into: dict[str, dict[str, int]], key: str, files: int, size: int) -> None:
    total = into.setdefault(key, {"files": 0, "bytes": 0})
    total["files"] += files
    total["bytes"] += size


@bp.get("/api/stats")
def stats() -> Response:
    principal = authenticate()
    project_id = request.args.get("projectId")
    if not project_id:
        raise errors.MissingProjectId()
    principal.check_project(check_project_id(project_id))
    counts = services().records.usage(tenant=principal.tenant, project_id=project_id)
    by_type: dict[str, dict[str, int]] = {}
    by_status: dict[str, dict[str, int]] = {}
    files = size = 0
    for count in counts:
        _add(by_status, count.status.value, count.files, count.bytes)
        if count.status in VISIBLE:  # what the project holds (not pending, rejected, ...)
            _add(by_type, count.file_type, count.files, count.bytes)
            files, size = files + count.files, size + count.bytes
    body: dict[str, Any] = {
        "success": True,
        "projectId": project_id,
        "tenant": principal.tenant or None,
        "files": files,
        "bytes": size,
        "byType": by_type,
        "byStatus": by_status,
        "counts": [
            {"fileType": c.file_type, "status": c.status.value, "files": c.files, "bytes": c.bytes}
            for c in counts
        ],
    }
    return jsonify(body)


def api_description() -> Described:
    return Described(
        paths={
            "/api/stats": {
                "get": {
                    "summary": "A project's files and bytes by type and status (kept as counters)",
                    "security": BEARER,
                    "parameters": [
                        {
                            **query_param("projectId", {"type": "string"}, "The project."),
                            "required": True,
                        },
                    ],
                    "responses": {
                        "200": named_response("Stats", "The counts."),
                        **ERROR_RESPONSES,
                    },
                }
            }
        },
        schemas={
            "Stats": {
                "type": "object",
                "required": [
                    "success",
                    "projectId",
                    "tenant",
                    "files",
                    "bytes",
                    "byType",
                    "byStatus",
                    "counts",
                ],
                "properties": {
                    "success": {"const": True},
                    "projectId": {"type": "string"},
                    "tenant": NULLABLE_STRING,
                    "files": {
                        "type": "integer",
                        "description": "stored, processing, ready, failed and infected files",
                    },
                    "bytes": {"type": "integer"},
                    "byType": {
                        "type": "object",
                        "description": "the visible files by fileType",
                        "propertyNames": {"enum": FILE_TYPE_NAMES},
                        "additionalProperties": ref("Count"),
                    },
                    "byStatus": {"type": "object", "additionalProperties": ref("Count")},
                    "counts": {
                        "type": "array",
                        "items": {
                            "allOf": [ref("Count")],
                            "required": ["fileType", "status"],
                            "properties": {
                                "fileType": {"type": "string", "enum": FILE_TYPE_NAMES},
                                "status": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Count": {
                "type": "object",
                "required": ["files", "bytes"],
                "properties": {"files": {"type": "integer"}, "bytes": {"type": "integer"}},
            },
        },
    )
