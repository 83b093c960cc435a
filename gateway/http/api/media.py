"""Media records: read, list and delete, scoped to what the token may see."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context

from gateway import errors
from gateway.http.api import services
from gateway.http.api.present import media_json
from gateway.http.api.spec import (
    BEARER,
    ERROR_RESPONSES,
    NULLABLE_STRING,
    VISIBLE_STATUSES,
    Described,
    named_response,
    path_param,
    query_param,
    ref,
)
from gateway.http.auth import authenticate
from gateway.media.lifecycle import SETTLED, VISIBLE, Status
from gateway.media.naming import check_project_id
from gateway.media.records import MediaRecord
from gateway.media.service import POLL_SECONDS, PageRequest
from gateway.storage.keys import media_id_of_key
from gateway.uploads.sniff import mime_of_extension, served_as

bp = Blueprint("media", __name__)
local_bp = Blueprint("local_media", __name__)  # registered only for the local store
MAX_PAGE = 100
MAX_WAIT = 60
KEEPALIVE_SECONDS = 15


class _StreamSlots:
    """The open event streams of this process, bounded by GATEWAY_MAX_EVENT_STREAMS so that
    they cannot take every connection from uploads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def acquire(self, *, blocking: bool) -> bool:
        with self._lock:
            if self.open >= services().settings.max_event_streams:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.open -= 1


_streams = _StreamSlots()


@bp.get("/api/media/<media_id>")
def get_media(media_id: str) -> Response:
    """``?waitForChange=<version>`` (a long poll): answer once the record's version differs,
    or after ``timeout`` seconds (1-60, default 30) with it unchanged."""
    principal = authenticate()
    media = services().media
    record = media.visible(principal, media_id, in_progress=True)
    known = request.args.get("waitForChange")
    if known is not None:
        try:
            version, timeout = int(known), float(request.args.get("timeout", "30"))
        except ValueError:
            raise errors.InvalidWait() from None
        if not 1 <= timeout <= MAX_WAIT:
            raise errors.InvalidWait()
        record = media.wait_for_change(principal, record, version=version, timeout=timeout)
    return jsonify(success=True, **media_json(record))


@bp.get("/api/media/<media_id>/events")
def media_events(media_id: str) -> Response:
    """Server-Sent Events: the media as JSON each time it changes, until processing has
    settled (ready, failed, infected); a comment line every 15 s keeps proxies from closing."""
    principal = authenticate()
    media = services().media
    record = media.visible(principal, media_id)
    if not _streams.acquire(blocking=False):
        raise errors.TooManyStreams()

    def stream() -> Iterator[str]:
        current: MediaRecord | None = record
        version, quiet_since = -1, time.monotonic()
        while current is not None:
            if current.version != version:
                version, quiet_since = current.version, time.monotonic()
                yield f"event: media\ndata: {json.dumps(media_json(current))}\n\n"
                if current.status in SETTLED:
                    return
            elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            time.sleep(POLL_SECONDS)
            try:
                current = media.visible(principal, media_id)
            except errors.MediaNotFound:
                yield "event: deleted\ndata: {}\n\n"
                current = None

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    # The server closes every response once, also a HEAD's or one whose client left before the
    # first event (the generator never runs then): the slot goes back there.
    response.call_on_close(_streams.release)
    return response


@bp.delete("/api/media/<media_id>")
def delete_media(media_id: str) -> tuple[str, int]:
    services().media.delete(authenticate(), media_id)
    return "", 204


@bp.get("/api/media")
def list_media() -> Response:
    principal = authenticate()
    media = services().media
    project_id = request.args.get("projectId")
    if not project_id:
        raise errors.MissingProjectId()
    scope = media.scope(principal, check_project_id(project_id))
    page = media.list_media(scope, _page_request())
    return jsonify(
        success=True, items=[media_json(r) for r in page.items], nextCursor=page.next_cursor
    )


def _page_request() -> PageRequest:
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise errors.InvalidLimit()
    status = request.args.get("status")
    return PageRequest(
        limit=limit,
        cursor=request.args.get("cursor") or None,
        status=None if status is None else _status_filter(status),
    )


def _status_filter(text: str) -> Status:
    listed = {status.value: status for status in VISIBLE}
    if text not in listed:
        raise errors.InvalidStatusFilter(f"status must be one of {', '.join(sorted(listed))}.")
    return listed[text]


@local_bp.get("/media/<path:key>")
def serve_local(key: str) -> Response:
    """Embedded mode only: stored files at the URL the upload returned (nginx may serve these),
    while their media may be served: withheld media (failed, infected) answer as absent files."""
    svc = services()
    local = svc.storage.local
    media_id = media_id_of_key(key)
    if local is None or media_id is None or not local.is_servable(key):
        raise errors.NotFound()  # only the gateway's own committed keys, never other files
    try:
        servable = svc.records.get(media_id).servable
    except errors.MediaNotFound:
        servable = False  # its record is gone (deleted): an orphan, for the sweeper
    if not servable:
        raise errors.NotFound()
    path = local.path_of(key)
    served = served_as(mime_of_extension(path.suffix))  # as S3 serves it (gateway/uploads/sniff.py)
    response = send_file(
        path,
        mimetype=served.content_type.partition(";")[0],  # werkzeug adds text/*'s charset
        as_attachment=not served.inline,
        conditional=True,
        max_age=3600,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def api_description() -> Described:
    media_id = path_param("mediaId", "The media record's id.")
    return Described(
        paths={
            "/api/media": {
                "get": {
                    "summary": "The project's media, newest first",
                    "security": BEARER,
                    "parameters": [
                        {
                            **query_param("projectId", {"type": "string"}, "The project."),
                            "required": True,
                        },
                        query_param(
                            "status", {"type": "string", "enum": VISIBLE_STATUSES}, "Only these."
                        ),
                        query_param(
                            "cursor", {"type": "string"}, "From the last page's nextCursor."
                        ),
                        query_param(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 100},
                            "Page size (20).",
                        ),
                    ],
                    "responses": {
                        "200": named_response("MediaList", "A page."),
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/api/media/{mediaId}": {
                "get": {
                    "summary": "One media record (optionally waiting for a change)",
                    "security": BEARER,
                    "parameters": [
                        media_id,
                        query_param(
                            "waitForChange",
                            {"type": "integer"},
                            "Answer once the version differs from this one (or at the timeout).",
                        ),
                        query_param("timeout", {"type": "number"}, "Seconds to wait (capped)."),
                    ],
                    "responses": {
                        "200": named_response("MediaAnswer", "The record."),
                        **ERROR_RESPONSES,
                    },
                },
                "delete": {
                    "summary": "Delete a record and its object (the uploader or an admin)",
                    "security": BEARER,
                    "parameters": [media_id],
                    "responses": {"204": {"description": "Deleted."}, **ERROR_RESPONSES},
                },
            },
            "/api/media/{mediaId}/events": {
                "get": {
                    "summary": "Server-Sent Events: the record each time it changes",
                    "security": BEARER,
                    "parameters": [media_id],
                    "responses": {
                        "200": {
                            "description": "An event stream (`data:` is a Media record).",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **ERROR_RESPONSES,
                    },
                }
            },
            "/media/{key}": {
                "get": {
                    "summary": "Embedded mode only: a stored file (nginx serves these in "
                    "production)",
                    "parameters": [path_param("key", "The object's key.")],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **ERROR_RESPONSES,
                    },
                }
            },
        },
        schemas={
            "MediaAnswer": {
                "allOf": [ref("Media")],
                "properties": {"success": {"const": True}},
            },
            "MediaList": {
                "type": "object",
                "required": ["success", "items", "nextCursor"],
                "properties": {
                    "success": {"const": True},
                    "items": {"type": "array", "items": ref("Media")},
                    "nextCursor": NULLABLE_STRING,
                },
            },
        },
    )
