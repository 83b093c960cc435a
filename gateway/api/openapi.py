"""The OpenAPI 3.1 description of every route, at ``/openapi.json``; a readable page at ``/docs``.

Written here once, next to the routes it describes; the error codes come from
``errors.CATALOGUE`` (so a new error is described the moment it is declared). schemathesis runs
the document against a live gateway in the suite (tests/test_openapi.py): no 5xx for any
generated input, every answer as described. The docs page is Swagger UI from the
flask-swagger-ui wheel, served by the gateway itself (no CDN).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify

from .. import errors
from ..records import Sha256State

bp = Blueprint("openapi", __name__)

DOCS_PATH = "/docs"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ok(name: str, description: str) -> dict[str, Any]:
    return _json(_ref(name), description)


ERROR = _ok("Error", "An error: a stable code, a message, the request id.")
ANSWERS_ERRORS = {"default": ERROR}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
NULLABLE_STRING = {"type": ["string", "null"]}
HTML_PAGE = {"description": "A page.", "content": {"text/html": {"schema": {"type": "string"}}}}
SEE_OTHER = {
    "description": "Go on to the Location.",
    "headers": {"Location": {"schema": {"type": "string"}}},
}


def _path_id(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _header(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _tus_headers(*names: str) -> dict[str, Any]:
    described = {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": "bytes the gateway holds",
        "Upload-Length": "the upload's length",
        "Upload-Expires": "when a pending upload expires (RFC 9110 date)",
        "Location": "the upload's URL",
        "Tus-Version": "1.0.0",
        "Tus-Extension": "the extensions this server speaks",
        "Tus-Max-Size": "the largest upload",
        "Tus-Checksum-Algorithm": "md5,sha1,sha256",
    }
    return {n: {"description": described[n], "schema": {"type": "string"}} for n in names}


MEDIA_ID = _path_id("mediaId", "The media record's id.")
UPLOAD_ID = _path_id("uploadId", "The direct or tus upload's id (its mediaId).")
STATUS_FILTER = ["stored", "processing", "ready", "failed", "infected"]


def _schemas() -> dict[str, Any]:
    variant = {
        "type": "object",
        "required": ["name", "url", "contentType"],
        "properties": {
            "name": {"type": "string"},
            "url": NULLABLE_STRING,
            "contentType": {"type": "string"},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "size": {"type": ["integer", "null"]},
        },
    }
    media = {
        "type": "object",
        "description": "A media record as every route shows it.",
        "required": [
            "mediaId",
            "projectId",
            "owner",
            "originalName",
            "fileType",
            "contentType",
            "s3Key",
            "url",
            "size",
            "sha256",
            "sha256State",
            "metadata",
            "status",
            "variants",
            "createdAt",
            "version",
        ],
        "properties": {
            "mediaId": {"type": "string"},
            "projectId": {"type": "string"},
            "tenant": NULLABLE_STRING,
            "owner": {"type": "string"},
            "originalName": {"type": "string"},
            "fileType": {"type": "string"},
            "contentType": {"type": "string"},
            "s3Key": {"type": "string"},
            "url": {
                **NULLABLE_STRING,
                "description": "null until the file may be served; null when failed or infected",
            },
            "size": {"type": ["integer", "null"]},
            "sha256": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{64}$",
                "description": "hex SHA-256 of the stored bytes; null while sha256State is pending",
            },
            "sha256State": {
                "type": "string",
                "enum": [state.value for state in Sha256State],
                "description": (
                    "how sha256 is known: received (hashed by the gateway over the bytes it "
                    "received: forms, tus), verified (promised by the client and checked against "
                    "what the store holds: direct uploads), pending (not known yet: processing "
                    "computes it from the stored object), computed (computed from the stored "
                    "object, by processing or, with processing off, by complete)"
                ),
            },
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": {
                "type": "string",
                "enum": ["pending", *STATUS_FILTER, "rejected", "aborted", "expired"],
            },
            "stage": NULLABLE_STRING,
            "variants": {"type": "array", "items": variant},
            "properties": {"type": ["object", "null"]},
            "createdAt": {"type": "string", "format": "date-time"},
            "version": {"type": "integer"},
            "upload": {
                "type": "object",
                "properties": {
                    "protocol": {"const": "tus"},
                    "offset": {"type": "integer"},
                    "length": {"type": ["integer", "null"]},
                    "expiresAt": NULLABLE_STRING,
                },
            },
            "reason": {"type": "string"},
            "error": {"type": "string"},
        },
    }
    direct = {
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
                "enum": ["pending", "stored", "rejected", "aborted", "expired", *STATUS_FILTER],
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
            "media": _ref("Media"),
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
                    "parts": {"type": "array", "items": _ref("PartUrl")},
                },
            },
        },
    }
    return {
        "Session": {
            "type": "object",
            "required": ["success", "csrfToken", "csrfHeader", "csrfField", "expiresAt"],
            "properties": {
                "success": {"const": True},
                "csrfToken": {"type": "string"},
                "csrfHeader": {"const": "X-CSRF-TOKEN"},
                "csrfField": {"const": "csrf_token"},
                "expiresAt": {"type": "string"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["success", "error", "requestId"],
            "properties": {
                "success": {"const": False},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": sorted(errors.CATALOGUE)},
                        "message": {"type": "string"},
                    },
                },
                "requestId": {"type": "string"},
            },
        },
        "Media": media,
        "MediaAnswer": {
            "allOf": [_ref("Media")],
            "properties": {"success": {"const": True}},
        },
        "UploadAnswer": {
            "type": "object",
            "description": "One file: the record's fields at the top level too; several: files.",
            "required": ["success", "files"],
            "properties": {
                "success": {"const": True},
                "files": {"type": "array", "items": _ref("Media"), "minItems": 1},
            },
        },
        "MediaList": {
            "type": "object",
            "required": ["success", "items", "nextCursor"],
            "properties": {
                "success": {"const": True},
                "items": {"type": "array", "items": _ref("Media")},
                "nextCursor": NULLABLE_STRING,
            },
        },
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
                "byType": {"type": "object", "additionalProperties": _ref("Count")},
                "byStatus": {"type": "object", "additionalProperties": _ref("Count")},
                "counts": {
                    "type": "array",
                    "items": {
                        "allOf": [_ref("Count")],
                        "required": ["fileType", "status"],
                        "properties": {
                            "fileType": {"type": "string"},
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
        "DirectUpload": direct,
        "PartUrl": {
            "type": "object",
            "required": ["partNumber", "size", "url"],
            "properties": {
                "partNumber": {"type": "integer"},
                "size": {"type": "integer"},
                "url": {"type": "string"},
            },
        },
        "Initiate": {
            "type": "object",
            "required": ["projectId", "files"],
            "properties": {
                "projectId": {"type": "string"},
                "signRequests": {
                    "type": "boolean",
                    "description": "The client sends every S3 request itself, each signed by "
                    "POST /api/uploads/sign (Uppy's @uppy/aws-s3 signRequest); it creates the "
                    "multipart upload.",
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
        },
        "Complete": {
            "type": "object",
            "properties": {
                "parts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["partNumber", "etag"],
                        "properties": {
                            "partNumber": {"type": "integer"},
                            "etag": {"type": "string"},
                        },
                    },
                }
            },
        },
    }


def _paths() -> dict[str, Any]:
    tus_id = [UPLOAD_ID, _header("Tus-Resumable", {"const": "1.0.0"}, "tus version", required=True)]
    return {
        "/api/upload": {
            "post": {
                "summary": "Upload files as a multipart/form-data form (streamed to storage)",
                "description": "Text fields first (projectId here or in the query, an optional "
                "sha256 before each file, any other field kept as metadata), then file parts "
                "named file or files. All or nothing. Idempotency-Key makes a replay safe.",
                "security": BEARER,
                "parameters": [
                    _query("projectId", {"type": "string"}, "The project, instead of a field."),
                    _header(
                        "Idempotency-Key", {"type": "string"}, "A retry gets the first answer."
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "projectId": {"type": "string"},
                                    "sha256": {"type": "string"},
                                    "file": {"type": "string", "format": "binary"},
                                    "files": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                },
                                "additionalProperties": {"type": "string"},
                            }
                        }
                    },
                },
                "responses": {"201": _ok("UploadAnswer", "Stored."), **ANSWERS_ERRORS},
            }
        },
        "/api/media": {
            "get": {
                "summary": "The project's media, newest first",
                "security": BEARER,
                "parameters": [
                    {**_query("projectId", {"type": "string"}, "The project."), "required": True},
                    _query("status", {"type": "string", "enum": STATUS_FILTER}, "Only these."),
                    _query("cursor", {"type": "string"}, "From the last page's nextCursor."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 100},
                        "Page size (20).",
                    ),
                ],
                "responses": {"200": _ok("MediaList", "A page."), **ANSWERS_ERRORS},
            }
        },
        "/api/media/{mediaId}": {
            "get": {
                "summary": "One media record (optionally waiting for a change)",
                "security": BEARER,
                "parameters": [
                    MEDIA_ID,
                    _query(
                        "waitForChange",
                        {"type": "integer"},
                        "Answer once the version differs from this one (or at the timeout).",
                    ),
                    _query("timeout", {"type": "number"}, "Seconds to wait (capped)."),
                ],
                "responses": {"200": _ok("MediaAnswer", "The record."), **ANSWERS_ERRORS},
            },
            "delete": {
                "summary": "Delete a record and its object (the uploader or an admin)",
                "security": BEARER,
                "parameters": [MEDIA_ID],
                "responses": {"204": {"description": "Deleted."}, **ANSWERS_ERRORS},
            },
        },
        "/api/media/{mediaId}/events": {
            "get": {
                "summary": "Server-Sent Events: the record each time it changes",
                "security": BEARER,
                "parameters": [MEDIA_ID],
                "responses": {
                    "200": {
                        "description": "An event stream (`data:` is a Media record).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **ANSWERS_ERRORS,
                },
            }
        },
        "/api/stats": {
            "get": {
                "summary": "A project's files and bytes by type and status (kept as counters)",
                "security": BEARER,
                "parameters": [
                    {**_query("projectId", {"type": "string"}, "The project."), "required": True},
                ],
                "responses": {"200": _ok("Stats", "The counts."), **ANSWERS_ERRORS},
            }
        },
        "/api/uploads/initiate": {
            "post": {
                "summary": "Direct-to-S3: promise files, get presigned URLs (S3 mode only)",
                "security": BEARER,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Initiate")}}},
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["success", "uploads"],
                            "properties": {
                                "success": {"const": True},
                                "uploads": {"type": "array", "items": _ref("DirectUpload")},
                            },
                        },
                        "Pending uploads with how to send each.",
                    ),
                    **ANSWERS_ERRORS,
                },
            }
        },
        "/api/uploads/sign": {
            "post": {
                "summary": "Presign one S3 request of a signRequests upload (@uppy/aws-s3)",
                "description": "PutObject to a single upload's key; CreateMultipartUpload, "
                "UploadPart, ListParts, CompleteMultipartUpload, AbortMultipartUpload of a "
                "multipart one. The first uploadId seen is the upload's; complete still checks "
                "what S3 holds.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
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
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["url", "headers"],
                            "properties": {
                                "url": {"type": "string"},
                                "key": {"type": "string"},
                                "headers": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                        "The URL and the headers it was signed with.",
                    ),
                    **ANSWERS_ERRORS,
                },
            }
        },
        "/api/uploads/{uploadId}": {
            "get": {
                "summary": "A direct upload's status and the parts S3 holds so far",
                "security": BEARER,
                "parameters": [UPLOAD_ID],
                "responses": {"200": _ok("DirectUpload", "The upload."), **ANSWERS_ERRORS},
            }
        },
        "/api/uploads/{uploadId}/parts": {
            "get": {
                "summary": "More presigned part URLs of a pending multipart upload",
                "security": BEARER,
                "parameters": [
                    UPLOAD_ID,
                    _query("first", {"type": "integer"}, "The first part number (1)."),
                    _query("count", {"type": "integer"}, "How many (at most a page)."),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["success", "uploadId", "parts"],
                            "properties": {
                                "success": {"const": True},
                                "uploadId": {"type": "string"},
                                "parts": {"type": "array", "items": _ref("PartUrl")},
                            },
                        },
                        "Part URLs.",
                    ),
                    **ANSWERS_ERRORS,
                },
            }
        },
        "/api/uploads/{uploadId}/complete": {
            "post": {
                "summary": "Check what S3 holds and store it (or reject it: 422)",
                "security": BEARER,
                "parameters": [UPLOAD_ID],
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("Complete")}}},
                "responses": {"200": _ok("DirectUpload", "Stored."), **ANSWERS_ERRORS},
            }
        },
        "/api/uploads/{uploadId}/abort": {
            "post": {
                "summary": "Abort a pending direct upload and remove what was sent",
                "security": BEARER,
                "parameters": [UPLOAD_ID],
                "responses": {"200": _ok("DirectUpload", "Aborted."), **ANSWERS_ERRORS},
            }
        },
        "/api/tus/": {
            "options": {
                "summary": "tus discovery (no token needed)",
                "responses": {
                    "204": {
                        "description": "What this tus server speaks.",
                        "headers": _tus_headers(
                            "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"
                        ),
                    }
                },
            },
            "post": {
                "summary": "tus creation (and creation-with-upload, concatenation)",
                "security": BEARER,
                "parameters": [
                    _header("Tus-Resumable", {"const": "1.0.0"}, "tus version", required=True),
                    _header("Upload-Length", {"type": "string"}, "The upload's length."),
                    _header("Upload-Defer-Length", {"const": "1"}, "Length given later."),
                    _header(
                        "Upload-Metadata",
                        {"type": "string"},
                        "key base64(value) pairs; projectId is required.",
                    ),
                    _header("Upload-Concat", {"type": "string"}, "partial, or final;URLs"),
                    _header("Idempotency-Key", {"type": "string"}, "A retry gets the same upload."),
                ],
                "responses": {
                    "201": {
                        "description": "Created.",
                        "headers": _tus_headers("Location", "Upload-Offset"),
                    },
                    **ANSWERS_ERRORS,
                },
            },
        },
        "/api/tus/{uploadId}": {
            "options": {
                "summary": "tus discovery",
                "parameters": [UPLOAD_ID],
                "responses": {"204": {"description": "What this tus server speaks."}},
            },
            "head": {
                "summary": "Where a tus upload stands",
                "security": BEARER,
                "parameters": tus_id,
                "responses": {
                    "200": {
                        "description": "The offset.",
                        "headers": _tus_headers("Upload-Offset", "Upload-Length"),
                    },
                    **ANSWERS_ERRORS,
                },
            },
            "patch": {
                "summary": "Append a chunk at Upload-Offset",
                "security": BEARER,
                "parameters": [
                    *tus_id,
                    _header(
                        "Upload-Offset", {"type": "string"}, "Where this chunk goes.", required=True
                    ),
                    _header("Upload-Checksum", {"type": "string"}, "algorithm base64(digest)"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/offset+octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "204": {"description": "Appended.", "headers": _tus_headers("Upload-Offset")},
                    **ANSWERS_ERRORS,
                },
            },
            "delete": {
                "summary": "tus termination",
                "security": BEARER,
                "parameters": tus_id,
                "responses": {"204": {"description": "Terminated."}, **ANSWERS_ERRORS},
            },
        },
        "/healthz": {
            "get": {
                "summary": "Alive",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "Alive.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready: object store and record store reachable, not stopping",
                "responses": {
                    code: _json(
                        {
                            "type": "object",
                            "required": ["ready", "checks"],
                            "properties": {
                                "ready": {"type": "boolean"},
                                "checks": {"type": "object"},
                            },
                        },
                        description,
                    )
                    for code, description in (("200", "Ready."), ("503", "Not ready."))
                },
            }
        },
        "/media/{key}": {
            "get": {
                "summary": "Embedded mode only: a stored file (nginx serves these in production)",
                "parameters": [_path_id("key", "The object's key.")],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **ANSWERS_ERRORS,
                },
            }
        },
        "/api/session": {
            "post": {
                "summary": "A bearer token becomes the browser's session cookie",
                "description": "Sets the HttpOnly session cookie (GATEWAY_SESSION_COOKIE) until "
                "the token expires, and a readable <name>_csrf cookie. Requests with the cookie "
                "must send the CSRF token: the X-CSRF-TOKEN header, or (a plain form to "
                "/api/upload) a csrf_token field before the first file.",
                "security": BEARER,
                "responses": {"201": _ok("Session", "The session is set."), **ANSWERS_ERRORS},
            },
            "delete": {
                "summary": "Clear the session cookies",
                "responses": {"204": {"description": "Cleared."}},
            },
        },
        "/upload": {
            "get": {
                "summary": "The upload page (a sign-in form without a session)",
                "responses": {"200": HTML_PAGE},
            }
        },
        "/upload/result": {
            "get": {
                "summary": "What a browser's form post stored, or the error it was sent",
                "parameters": [
                    _query("mediaId", {"type": "string"}, "A stored file (repeatable)."),
                    _query("error", {"type": "string"}, "An error code to explain."),
                ],
                "responses": {"200": HTML_PAGE, "default": HTML_PAGE},
            }
        },
        "/upload/sign-in": {
            "post": {
                "summary": "A pasted token becomes the session (from the gateway's own pages)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"token": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {"303": SEE_OTHER, "default": HTML_PAGE},
            }
        },
        "/upload/sign-out": {
            "post": {
                "summary": "Clear the session (from the gateway's own pages)",
                "responses": {"303": SEE_OTHER, "default": HTML_PAGE},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "upload-gateway",
            "version": "1",
            "description": "Uploads from forms, scripts, apps and tus clients into S3 (or a "
            "local directory), then scanned and described. Every error answers with the "
            "Error schema and a stable code.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": _schemas(),
        },
        "paths": _paths(),
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document())


def docs_blueprint() -> Blueprint:
    """Swagger UI at ``/docs``, its files from the flask-swagger-ui wheel (no CDN)."""
    from flask_swagger_ui import get_swaggerui_blueprint

    docs: Blueprint = get_swaggerui_blueprint(
        DOCS_PATH, "/openapi.json", config={"app_name": "upload-gateway"}
    )
    return docs
