"""POST /api/upload: the streaming multipart/form-data route."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from gateway import errors
from gateway.http.api import services, upload_body
from gateway.http.api.pages import BrowserAnswer, answer_browser, wants_html
from gateway.http.api.present import media_json
from gateway.http.api.spec import (
    BEARER,
    ERROR_RESPONSES,
    Described,
    header_param,
    named_response,
    query_param,
    ref,
)
from gateway.http.auth import authenticate_form
from gateway.http.lingering import drain_after_response
from gateway.http.weblog import elapsed, note, note_upload
from gateway.media.records import MediaRecord
from gateway.uploads import idempotency
from gateway.uploads.form import UploadRequest, UploadStats

bp = Blueprint("upload", __name__)


@bp.after_request
def linger(response: Response) -> Response:
    if response.status_code >= 400 or g.get("answered_error"):
        drain_after_response(response, request.environ)
    return response


def _answer(records: list[MediaRecord]) -> tuple[int, dict[str, Any]]:
    files = [media_json(record) for record in records]
    return 201, {"success": True, **(files[0] if len(files) == 1 else {}), "files": files}


@bp.post("/api/upload")
def upload() -> Response:
    """JSON for API clients; a browser's form post gets a 303 or a page (api/pages.py)."""
    stats = UploadStats()
    browser = BrowserAnswer(stats) if wants_html() else None
    if browser is not None:
        answer_browser(browser)
    principal, csrf_owed = authenticate_form()  # before a single body byte is read
    note(user=principal.subject, tenant=principal.tenant or None)
    note_upload("form")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if request.content_length is None and not chunked:
        raise errors.LengthRequired()
    upload_request = UploadRequest(
        principal=principal,
        content_type=request.content_type,
        content_length=request.content_length,
        query_project_id=request.args.get("projectId"),
        csrf_token=csrf_owed,
    )
    svc = services()
    boundary = svc.uploads.precheck(upload_request)
    with upload_body("form") as body:

        def first(plan: idempotency.AnswerPlan | None) -> tuple[int, dict[str, Any]]:
            try:
                stored = svc.uploads.ingest(
                    body, upload_request, boundary=boundary, stats=stats, answer=plan
                )
            finally:
                note(project=stats.project_id, files=stats.files, bytes=stats.bytes_received)
                note_upload("form", bytes=stats.bytes_received)
            note(outcome="stored")
            note_upload("form", seconds=elapsed())
            return (stored.status, stored.body) if plan is not None else _answer(stored.records)

        outcome = svc.idempotency.once(
            principal,
            request.headers.get("Idempotency-Key"),
            render=_answer,
            first=first,
            fingerprint_of_retry=lambda: svc.uploads.fingerprint(
                body, upload_request, boundary=boundary
            ),
        )
    if browser is not None:
        return browser.stored(outcome.body)
    response = _json(outcome.body, outcome.status)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        note(outcome="replayed")
    return response


def _json(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def api_description() -> Described:
    return Described(
        paths={
            "/api/upload": {
                "post": {
                    "summary": "Upload files as a multipart/form-data form (streamed to storage)",
                    "description": "Text fields first (projectId here or in the query, an "
                    "optional sha256 before each file, any other field kept as metadata), then "
                    "file parts named file or files. All or nothing. Idempotency-Key makes a "
                    "replay safe.",
                    "security": BEARER,
                    "parameters": [
                        query_param(
                            "projectId", {"type": "string"}, "The project, instead of a field."
                        ),
                        header_param(
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
                    "responses": {
                        "201": named_response("UploadAnswer", "Stored."),
                        **ERROR_RESPONSES,
                    },
                }
            }
        },
        schemas={
            "UploadAnswer": {
                "type": "object",
                "description": "One file: the record's fields at the top level too; several: "
                "files.",
                "required": ["success", "files"],
                "properties": {
                    "success": {"const": True},
                    "files": {"type": "array", "items": ref("Media"), "minItems": 1},
                },
            }
        },
    )
