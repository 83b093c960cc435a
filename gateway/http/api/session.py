"""POST /api/session: a bearer token becomes the browser's session cookie (for pages served by
another app on the same site), answered with its CSRF token; DELETE /api/session clears it."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request
from flask_jwt_extended import get_jwt, get_jwt_request_location

from gateway import errors
from gateway.http.api.pages import clear_session, set_session
from gateway.http.api.spec import BEARER, ERROR_RESPONSES, Described, named_response
from gateway.http.auth import authenticate, session_csrf_token
from gateway.uploads import csrf

bp = Blueprint("session", __name__)


@bp.post("/api/session")
def open_session() -> tuple[Response, int]:
    authenticate()
    if get_jwt_request_location() != "headers":
        raise errors.MissingToken("A session starts from a bearer token (Authorization header).")
    token = request.headers["Authorization"].split(None, 1)[1].strip()
    expires = datetime.fromtimestamp(get_jwt()["exp"], UTC)
    response = jsonify(
        success=True,
        csrfToken=session_csrf_token(token),
        csrfHeader=csrf.HEADER,
        csrfField=csrf.FORM_FIELD,
        expiresAt=expires.isoformat(timespec="seconds"),
    )
    set_session(response, token, expires)
    return response, 201


@bp.delete("/api/session")
def close_session() -> tuple[Response, int]:
    response = Response(status=204)
    clear_session(response)
    return response, 204


def api_description() -> Described:
    return Described(
        paths={
            "/api/session": {
                "post": {
                    "summary": "A bearer token becomes the browser's session cookie",
                    "description": "Sets the HttpOnly session cookie (GATEWAY_SESSION_COOKIE) "
                    "until the token expires, and a readable <name>_csrf cookie. Requests with "
                    "the cookie must send the CSRF token: the X-CSRF-TOKEN header, or (a plain "
                    "form to /api/upload) a csrf_token field before the first file.",
                    "security": BEARER,
                    "responses": {
                        "201": named_response("Session", "The session is set."),
                        **ERROR_RESPONSES,
                    },
                },
                "delete": {
                    "summary": "Clear the session cookies",
                    "responses": {"204": {"description": "Cleared."}},
                },
            }
        },
        schemas={
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
            }
        },
    )
