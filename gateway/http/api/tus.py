"""tus 1.0 at /api/tus/ (creation URL) and /api/tus/<id>: the wire format only
(gateway/uploads/tus.py holds the protocol). CORS for browsers: gateway/http/cors.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from flask import Blueprint, Response, request

from gateway import errors
from gateway.http.api import services, tus_requests, upload_body
from gateway.http.api.present import upload_seconds
from gateway.http.api.spec import BEARER, ERROR_RESPONSES, UPLOAD_ID, Described, header_param
from gateway.http.api.tus_requests import encode_metadata
from gateway.http.auth import authenticate
from gateway.http.lingering import drain_after_response
from gateway.http.weblog import note, note_upload
from gateway.media.lifecycle import Status
from gateway.media.principal import Principal
from gateway.media.records import IdempotentAnswer, MediaRecord, tus_state
from gateway.uploads import idempotency
from gateway.uploads.tus import CHECKSUMS, TusService

bp = Blueprint("tus", __name__)
TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
)
PATCH_TYPE = "application/offset+octet-stream"


def _service() -> TusService:
    tus = services().tus
    assert tus is not None  # both stores have chunk storage
    return tus


@bp.before_request
def require_tus_resumable() -> None:
    if request.method == "OPTIONS":
        return
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise errors.TusVersionUnsupported()


@bp.after_request
def tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    if response.status_code < 300 and not response.is_streamed and not response.get_data():
        response.headers.pop("Content-Type", None)  # an empty answer has no type (Flask adds one)
    if response.status_code >= 400:
        drain_after_response(response, request.environ)
    return response


@bp.route("/api/tus/", methods=["OPTIONS"])
@bp.route("/api/tus/<upload_id>", methods=["OPTIONS"])
def options(upload_id: str | None = None) -> Response:
    response = Response(status=204)
    response.headers.update(
        {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(_service().max_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        }
    )
    return response


def _method() -> str:
    override = request.headers.get("X-HTTP-Method-Override", "").upper()
    if request.method == "POST" and override in ("PATCH", "DELETE", "HEAD"):
        return override
    return request.method


def _location(record: MediaRecord) -> str:
    return f"{request.host_url.rstrip('/')}/api/tus/{record.media_id}"


def _state_headers(response: Response, record: MediaRecord) -> Response:
    upload = tus_state(record)
    response.headers["Upload-Offset"] = str(upload.offset)
    response.headers["Cache-Control"] = "no-store"
    if upload.length is None:
        response.headers["Upload-Defer-Length"] = "1"
    else:
        response.headers["Upload-Length"] = str(upload.length)
    if upload.client_metadata:
        response.headers["Upload-Metadata"] = encode_metadata(upload.client_metadata)
    if upload.concat == "partial":
        response.headers["Upload-Concat"] = "partial"
    elif upload.concat == "final":
        response.headers["Upload-Concat"] = "final;" + " ".join(
            f"{request.host_url.rstrip('/')}/api/tus/{p}" for p in upload.partials
        )
    if record.status is Status.PENDING:
        response.headers["Upload-Expires"] = _expires(record)
    return response


def _expires(record: MediaRecord) -> str:
    return format_datetime(datetime.fromisoformat(tus_state(record).expires_at), usegmt=True)


def _note_patched(record: MediaRecord, offset_before: int) -> None:
    done = record.status is not Status.PENDING
    note_upload(
        "tus",
        outcome="stored" if done else "partial",
        bytes=tus_state(record).offset - offset_before,
        seconds=upload_seconds(record) if done else None,
    )


def _body_length() -> int | None:
    return request.content_length


_CREATION_HEADERS = ("Upload-Length", "Upload-Defer-Length", "Upload-Metadata", "Upload-Concat")


def _creation_answer(records: list[MediaRecord]) -> tuple[int, dict[str, Any]]:
    return 201, {"mediaId": records[0].media_id}


def _created(principal: Principal) -> tuple[MediaRecord, bool]:
    """The new upload, or with an Idempotency-Key already used for this creation, the upload it
    made (True: replayed). A client that lost the answer to its creation (killed, or the
    connection dropped) finds its upload again instead of leaving one behind."""
    tus = _service()
    headers = {name: request.headers.get(name) for name in _CREATION_HEADERS}
    creation = tus_requests.creation(request.headers)

    def create(answer: Callable[[MediaRecord], IdempotentAnswer] | None) -> MediaRecord:
        return tus.create(principal, creation, answer=answer)

    fingerprint = hashlib.sha256(json.dumps(["tus", headers]).encode()).hexdigest()
    made: list[MediaRecord] = []

    def first(plan: idempotency.AnswerPlan | None) -> tuple[int, dict[str, Any]]:
        if plan is None:
            made.append(create(None))
        else:
            made.append(create(lambda record: plan.answer([record], fingerprint)[0]))
        return _creation_answer(made)

    outcome = services().idempotency.once(
        principal,
        request.headers.get("Idempotency-Key"),
        render=_creation_answer,
        first=first,
        fingerprint_of_retry=lambda: fingerprint,
    )
    if not outcome.replayed:
        return made[0], False
    return tus.get(principal, outcome.body["mediaId"]), True


@bp.post("/api/tus/")
def create() -> Response:
    principal = authenticate()
    note(user=principal.subject, protocol="tus")
    tus = _service()
    record, replayed = _created(principal)
    if replayed:  # the upload as it stands; a body sent with the retry is not taken
        note(outcome="replayed", media=record.media_id)
        response = _state_headers(Response(status=201), record)
        response.headers["Location"] = _location(record)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    note(project=record.project_id, media=record.media_id)
    has_body = (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )
    if has_body and tus_state(record).concat != "final":  # creation-with-upload
        note_upload("tus")
        if request.mimetype != PATCH_TYPE:
            raise errors.TusContentType()
        with upload_body("tus") as body:
            record = tus.patch(
                principal,
                record.media_id,
                body,
                tus_requests.first_chunk(request.headers, content_length=_body_length()),
            )
        _note_patched(record, 0)
    response = _state_headers(Response(status=201), record)
    response.headers["Location"] = _location(record)
    return response


@bp.route("/api/tus/<upload_id>", methods=["HEAD", "PATCH", "DELETE", "POST"])
def upload(upload_id: str) -> Response:
    principal = authenticate()
    note(user=principal.subject, protocol="tus", media=upload_id)
    tus = _service()
    method = _method()
    if method == "HEAD":
        return _state_headers(Response(status=200), tus.live(principal, upload_id))
    if method == "DELETE":
        tus.terminate(principal, upload_id)
        return Response(status=204)
    if method != "PATCH":
        raise errors.MethodNotAllowed()
    note_upload("tus")
    if request.mimetype != PATCH_TYPE:
        raise errors.TusContentType()
    chunk = tus_requests.chunk(
        request.headers, offset=request.headers.get("Upload-Offset"), content_length=_body_length()
    )
    with upload_body("tus") as body:
        record = tus.patch(principal, upload_id, body, chunk)
    note(offset=tus_state(record).offset)
    _note_patched(record, chunk.offset)
    response = Response(status=204)
    response.headers["Upload-Offset"] = str(tus_state(record).offset)
    if record.status is Status.PENDING:
        response.headers["Upload-Expires"] = _expires(record)
    return response


def api_description() -> Described:
    tus_resumable = header_param("Tus-Resumable", {"const": "1.0.0"}, "tus version", required=True)
    return Described(
        paths={
            "/api/tus/": {
                "options": {
                    "summary": "tus discovery (no token needed)",
                    "responses": {
                        "204": {
                            "description": "What this tus server speaks.",
                            "headers": _answer_headers(
                                "Tus-Version",
                                "Tus-Extension",
                                "Tus-Max-Size",
                                "Tus-Checksum-Algorithm",
                            ),
                        }
                    },
                },
                "post": {
                    "summary": "tus creation (and creation-with-upload, concatenation)",
                    "security": BEARER,
                    "parameters": [
                        tus_resumable,
                        header_param("Upload-Length", {"type": "string"}, "The upload's length."),
                        header_param("Upload-Defer-Length", {"const": "1"}, "Length given later."),
                        header_param(
                            "Upload-Metadata",
                            {"type": "string"},
                            "key base64(value) pairs; projectId is required.",
                        ),
                        header_param("Upload-Concat", {"type": "string"}, "partial, or final;URLs"),
                        header_param(
                            "Idempotency-Key", {"type": "string"}, "A retry gets the same upload."
                        ),
                    ],
                    "responses": {
                        "201": {
                            "description": "Created.",
                            "headers": _answer_headers("Location", "Upload-Offset"),
                        },
                        **ERROR_RESPONSES,
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
                    "parameters": [UPLOAD_ID, tus_resumable],
                    "responses": {
                        "200": {
                            "description": "The offset.",
                            "headers": _answer_headers("Upload-Offset", "Upload-Length"),
                        },
                        **ERROR_RESPONSES,
                    },
                },
                "patch": {
                    "summary": "Append a chunk at Upload-Offset",
                    "security": BEARER,
                    "parameters": [
                        UPLOAD_ID,
                        tus_resumable,
                        header_param(
                            "Upload-Offset",
                            {"type": "string"},
                            "Where this chunk goes.",
                            required=True,
                        ),
                        header_param(
                            "Upload-Checksum", {"type": "string"}, "algorithm base64(digest)"
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {PATCH_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "204": {
                            "description": "Appended.",
                            "headers": _answer_headers("Upload-Offset"),
                        },
                        **ERROR_RESPONSES,
                    },
                },
                "delete": {
                    "summary": "tus termination",
                    "security": BEARER,
                    "parameters": [UPLOAD_ID, tus_resumable],
                    "responses": {"204": {"description": "Terminated."}, **ERROR_RESPONSES},
                },
            },
        },
        # X-HTTP-Method-Override: described as the method it stands for
        not_operations=frozenset({("POST", "/api/tus/{uploadId}")}),
    )


def _answer_headers(*names: str) -> dict[str, Any]:
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
    return {name: {"description": described[name], "schema": {"type": "string"}} for name in names}
