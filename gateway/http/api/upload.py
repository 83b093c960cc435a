"""POST /api/upload: the streaming multipart/form-data route."""

from __future__ import annotations

from collections.abc import Callable
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
from gateway.media.principal import Principal
from gateway.media.records import MediaRecord
from gateway.services import Services
from gateway.uploads import idempotency
from gateway.uploads.form import Opening, UploadRequest, UploadStats
from gateway.uploads.formdata import FormDataError, boundary_from_content_type
from gateway.uploads.ingest import BodyReader

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
    """JSON for API clients; a browser's form post gets a 303 or a page (api/pages.py). A post
    without an Authorization header may carry an upload ticket in its first fields instead of
    a token (gateway/uploads/tickets.py)."""
    stats = UploadStats()
    browser = BrowserAnswer(stats) if wants_html() else None
    if browser is not None:
        answer_browser(browser)
    svc = services()
    boundary = _may_carry_ticket(svc)
    if boundary is None:
        upload_request = _request(*authenticate_form())  # before a single body byte is read
        boundary = svc.uploads.precheck(upload_request)
        with upload_body("form") as body:
            outcome = _with_token(svc, body, upload_request, boundary, stats)
    else:
        with upload_body("form") as body:
            opening = svc.uploads.opening(body, boundary)  # at most 16 KiB, up to the files
            if opening.ticket is None:
                upload_request = _request(*authenticate_form())
                svc.uploads.precheck(upload_request)
                outcome = _with_token(svc, opening.body, upload_request, boundary, stats)
            else:
                outcome = _with_ticket(svc, opening, boundary, stats)
    if browser is not None:
        return browser.stored(outcome.body)
    response = _json(outcome.body, outcome.status)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        note(outcome="replayed")
    return response


def _may_carry_ticket(svc: Services) -> bytes | None:
    """The boundary of a post that may carry a ticket: no Authorization header, a multipart
    body within the size limit. None: anything else is answered as a token's post is."""
    if "Authorization" in request.headers:
        return None
    length, chunked = request.content_length, _chunked()
    if (length is None and not chunked) or (length or 0) > svc.settings.max_upload_bytes:
        return None
    try:
        return boundary_from_content_type(request.content_type)
    except FormDataError:
        return None


def _chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _request(principal: Principal, csrf_owed: str | None) -> UploadRequest:
    note(user=principal.subject, tenant=principal.tenant or None)
    note_upload("form")
    if request.content_length is None and not _chunked():
        raise errors.LengthRequired()
    return UploadRequest(
        principal=principal,
        content_type=request.content_type,
        content_length=request.content_length,
        query_project_id=request.args.get("projectId"),
        csrf_token=csrf_owed,
    )


def _with_token(
    svc: Services,
    body: BodyReader,
    upload_request: UploadRequest,
    boundary: bytes,
    stats: UploadStats,
) -> idempotency.Outcome:
    return svc.idempotency.once(
        upload_request.principal,
        request.headers.get("Idempotency-Key"),
        render=_answer,
        first=_first(svc, body, upload_request, boundary, stats),
        fingerprint_of_retry=lambda: svc.uploads.fingerprint(
            body, upload_request, boundary=boundary
        ),
    )


def _with_ticket(
    svc: Services, opening: Opening, boundary: bytes, stats: UploadStats
) -> idempotency.Outcome:
    """A ticket's post: the ticket is its token, its limits and its idempotency key (an
    Idempotency-Key header is not needed, and not read)."""
    assert opening.ticket is not None
    stats.by_ticket = True
    tickets = svc.tickets
    ticket = tickets.read(opening.ticket)
    stats.redirect = ticket.redirect  # signed: errors from here on may go there
    stats.redirect = ticket.redirect_for(opening.redirect)
    tickets.check_live(ticket)
    principal = ticket.principal()
    note(user=principal.subject, tenant=principal.tenant or None, ticket=ticket.id)
    note_upload("form")
    upload_request = UploadRequest(
        principal=principal,
        content_type=request.content_type,
        content_length=request.content_length,
        query_project_id=request.args.get("projectId"),
        ticket=ticket,
    )
    svc.uploads.precheck(upload_request)
    body = opening.body
    return tickets.once(
        ticket,
        render=_answer,
        first=_first(svc, body, upload_request, boundary, stats),
        fingerprint_of_retry=lambda: svc.uploads.fingerprint(
            body, upload_request, boundary=boundary
        ),
    )


def _first(
    svc: Services, body: BodyReader, upload_request: UploadRequest, boundary: bytes,
    stats: UploadStats,
) -> Callable[[idempotency.AnswerPlan | None], tuple[int, dict[str, Any]]]:  # fmt: skip
    """The upload itself, run unless an idempotent answer is replayed instead."""

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

    return first


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
                    "replay safe. Without a bearer token (or session cookie), an upload ticket "
                    "(POST /api/tickets) in a 'ticket' field before the first file, within the "
                    "first 16 KiB, authorizes one post within its limits.",
                    "security": [*BEARER, {}],
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
                                        "ticket": {"type": "string"},
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
