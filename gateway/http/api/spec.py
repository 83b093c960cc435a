"""The OpenAPI 3.1 vocabulary the resources describe their routes with, and the schemas several
of them answer with (Media, Error).

Each gateway/http/api/<resource>.py ends with ``api_description()``: the paths of its routes and the
schemas it owns, as plain data. openapi.py assembles them into /openapi.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import errors
from gateway.media.records import Sha256State
from gateway.uploads.sniff import FILE_TYPES

Schema = dict[str, Any]
Operation = dict[str, Any]
PathItem = dict[str, Operation]  # lower-case method -> operation

JSON = "application/json"


@dataclass(frozen=True)
class Described:
    """What one module adds to the document. ``not_operations``: routes it serves that are
    deliberately no operation of their own, as ``(METHOD, path)`` (an override of another
    method, a route of another listener)."""

    paths: dict[str, PathItem] = field(default_factory=dict)
    schemas: dict[str, Schema] = field(default_factory=dict)
    not_operations: frozenset[tuple[str, str]] = frozenset()


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def named_response(schema_name: str, description: str) -> dict[str, Any]:
    return json_response(ref(schema_name), description)


def path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def query_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def header_param(
    name: str, schema: Schema, description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


ERROR_RESPONSES = {
    "default": named_response("Error", "An error: a stable code, a message, the request id.")
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
NULLABLE_STRING = {"type": ["string", "null"]}
UPLOAD_ID = path_param("uploadId", "The direct or tus upload's id (its mediaId).")
VISIBLE_STATUSES = ["stored", "processing", "ready", "failed", "infected"]


def shared() -> Described:
    """The schemas of more than one resource: the error every route may answer, the media
    record that uploads, media and direct uploads show (api/present.py's ``media_json``)."""
    return Described(schemas={"Error": _error(), "Media": _media()})


def _error() -> Schema:
    return {
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
    }


def _media() -> Schema:
    variant = {
        "type": "object",
        "required": ["name", "url", "contentType"],
        "properties": {
            "name": {
                "type": "string",
                "description": (
                    "thumb-<size> (images), poster (videos), preview (PDFs); audio: peaks (BBC "
                    "audiowaveform JSON, version 2), waveform (PNG), opus (Ogg Opus copy of "
                    "uncompressed or lossless audio)"
                ),
            },
            "url": NULLABLE_STRING,
            "contentType": {"type": "string"},
            "width": {"type": ["integer", "null"], "description": "null when no picture"},
            "height": {"type": ["integer", "null"]},
            "size": {"type": ["integer", "null"]},
        },
    }
    return {
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
            "fileType": {
                "type": "string",
                "enum": [*FILE_TYPES, "other"],
                "description": (
                    "the major type of contentType; a container that may hold audio or video "
                    "(MP4, WebM, Ogg) whose first bytes could not tell is settled by processing"
                ),
            },
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
                "enum": ["pending", *VISIBLE_STATUSES, "rejected", "aborted", "expired"],
            },
            "stage": NULLABLE_STRING,
            "variants": {"type": "array", "items": variant},
            "properties": {
                "type": ["object", "null"],
                "description": (
                    "what processing found: images width, height, format, orientation, "
                    "gpsFound, ...; videos width, height, codec, duration; audio duration, "
                    "codec, container, sampleRate, channels, channelLayout, bitRate, lossless, "
                    "tags (title, artist, album, date, comment, encoder), transcode ({codec, "
                    "bitRate, size} of the Opus copy, or {skipped: why})"
                ),
            },
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
