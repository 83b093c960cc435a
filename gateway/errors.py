"""The one error vocabulary: every refusal has a stable code, a message and an HTTP status.

Services raise these; ``render`` is the only place that turns one into a response body.
"""
from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    message = "Internal server error."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        if code:
            self.code = code
        if status:
            self.status = status
        self.headers = headers or {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        return {"success": False, "error": {"code": self.code, "message": self.message},
                "requestId": request_id}


class BadRequest(GatewayError):
    status, code, message = 400, "bad_request", "The request is malformed."


class MalformedBody(BadRequest):
    code, message = "malformed_body", "The multipart/form-data body is malformed."


class ClientDisconnected(BadRequest):
    code, message = "client_disconnected", "The body ended before it was complete."


class Unauthorized(GatewayError):
    status, code, message = 401, "unauthorized", "A valid bearer token is required."

    def __init__(self, message: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="upload-gateway"'})
        super().__init__(message, **kw)


class Forbidden(GatewayError):
    status, code, message = 403, "forbidden", "The token does not allow this."


class NotFound(GatewayError):
    status, code, message = 404, "not_found", "Not found."


class Conflict(GatewayError):
    status, code, message = 409, "conflict", "The request conflicts with one in progress."


class LengthRequired(GatewayError):
    status, code, message = 411, "length_required", "Content-Length or chunked encoding is required."


class TooLarge(GatewayError):
    status, code, message = 413, "too_large", "The upload is larger than allowed."


class UnsupportedType(GatewayError):
    status, code, message = 415, "unsupported_type", "The file type is not allowed."


class Unprocessable(GatewayError):
    status, code, message = 422, "unprocessable", "The upload could not be accepted."


class StorageError(GatewayError):
    """The object store failed; ``retryable`` errors (throttling, unavailability) answer 503."""

    status, code, message = 502, "storage_error", "The object store failed; nothing was kept."

    def __init__(self, message: str | None = None, *, retryable: bool = False, **kw: Any) -> None:
        if retryable:
            kw.setdefault("status", 503)
            kw.setdefault("code", "storage_unavailable")
            kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)


class RecordStoreError(GatewayError):
    status, code, message = 503, "records_unavailable", "The record store failed; nothing was kept."

    def __init__(self, message: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)


class RecordNotFound(NotFound):
    code, message = "media_not_found", "No such media."


class RecordExists(Conflict):
    code, message = "record_exists", "A record with this id already exists."
