"""The one error vocabulary: every refusal the gateway gives, declared once, here.

Each class is one stable ``code`` with its HTTP ``status`` and default message (as tusd declares
``ErrNotFound = NewError(...)``). Code elsewhere raises these classes, optionally with a more
specific message; it never invents a code. ``CATALOGUE`` lists them all: the table in docs/errors.md
is checked against it. ``weblog.render`` is the only place that turns one into a response.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """The base, and the answer to anything unexpected (500 ``internal_error``, no details).

    A subclass that sets ``abstract = True`` in its body only groups codes (never raised).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    message: str = "Internal server error."
    headers: dict[str, str]

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or type(self).message
        super().__init__(self.message)
        self.headers = {**self.default_headers(), **(headers or {})}

    def default_headers(self) -> dict[str, str]:
        return {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        return {
            "success": False,
            "error": {"code": self.code, "message": self.message},
            "requestId": request_id,
        }


CATALOGUE: dict[str, type[GatewayError]] = {"internal_error": GatewayError}


def _declare(cls: type[GatewayError]) -> type[GatewayError]:
    if cls.code in CATALOGUE:
        raise TypeError(f"error code {cls.code!r} declared twice")
    CATALOGUE[cls.code] = cls
    return cls


class _Retryable(GatewayError):
    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


# -- 400: the request is malformed ---------------------------------------------------------------
class BadRequest(GatewayError):
    abstract = True
    status, code, message = 400, "bad_request", "The request is malformed."


class MalformedBody(BadRequest):
    code, message = "malformed_body", "The multipart/form-data body is malformed."


class BadContentType(BadRequest):
    code, message = "bad_content_type", "Content-Type must be multipart/form-data with a boundary."


class ClientDisconnected(BadRequest):
    code, message = "client_disconnected", "The body ended before it was complete."


class InvalidJson(BadRequest):
    code, message = (
        "invalid_json",
        "The body must be a JSON object (Content-Type: application/json).",
    )


class MissingProjectId(BadRequest):
    code, message = "missing_project_id", "projectId is required."


class InvalidProjectId(BadRequest):
    code, message = "invalid_project_id", "projectId must be 1-64 letters, digits, '.', '_' or '-'."


class InvalidSha256(BadRequest):
    code, message = "invalid_sha256", "sha256 must be 64 hexadecimal characters."


class NoFile(BadRequest):
    code, message = "no_file", "The form has no file part ('file' or 'files')."


class UnexpectedFileField(BadRequest):
    code, message = "unexpected_file_field", "File parts must be named 'file' or 'files'."


class InvalidFiles(BadRequest):
    code, message = "invalid_files", "files must be a non-empty list of file objects."


class InvalidParts(BadRequest):
    code, message = "invalid_parts", "parts must be a list of {partNumber, etag}."


class InvalidPartRange(BadRequest):
    code, message = "invalid_part_range", "The requested part numbers are not valid."


class InvalidRedirect(BadRequest):
    code, message = (
        "invalid_redirect",
        "redirect must be a path on the gateway or a URL on an allowed origin.",
    )


class InvalidSignRequest(BadRequest):
    code, message = (
        "invalid_sign_request",
        "This S3 request cannot be signed for this upload.",
    )


class InvalidLimit(BadRequest):
    code, message = "invalid_limit", "limit must be between 1 and 100."


class InvalidCursor(BadRequest):
    code, message = "invalid_cursor", "The cursor is not valid."


class InvalidStatusFilter(BadRequest):
    code, message = "invalid_status", "status must be one of the media statuses."


class InvalidWait(BadRequest):
    code, message = "invalid_wait", "waitForChange must be a version number and timeout 1-60 s."


class InvalidTusHeader(BadRequest):
    code, message = "invalid_tus_header", "A tus header (Upload-*) is not valid."


class UnsupportedChecksum(BadRequest):
    code, message = "unsupported_checksum", "Upload-Checksum supports md5, sha1 and sha256."


class InvalidEvent(BadRequest):
    code, message = "invalid_event", "The body is not an S3 event notification."


class InvalidTicketRequest(BadRequest):
    code, message = "invalid_ticket_request", "The ticket request is not valid."


class InvalidIdempotencyKey(BadRequest):
    code, message = (
        "invalid_idempotency_key",
        "Idempotency-Key must be 1-255 visible ASCII characters.",
    )


# -- 401 / 403 / 404: who may do what -----------------------------------------------------------
class Unauthorized(GatewayError):
    abstract = True
    status, code, message = 401, "unauthorized", "A valid bearer token is required."

    def default_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="upload-gateway"'}


class MissingToken(Unauthorized):
    code, message = (
        "missing_token",
        "A bearer token is required in the Authorization header (or a session cookie).",
    )


class InvalidToken(Unauthorized):
    code, message = "invalid_token", "The token is not valid."


class TokenExpired(Unauthorized):
    code, message = "token_expired", "The token has expired."


class TicketInvalid(Unauthorized):
    code, message = "ticket_invalid", "The upload ticket is not valid."


class TicketExpired(Unauthorized):
    code, message = (
        "ticket_expired",
        "The upload ticket has expired: reload the form for a new one.",
    )


class EventSecretInvalid(Unauthorized):
    code, message = (
        "event_secret_invalid",
        "Bucket notifications need the events secret as the HTTP Basic password.",
    )

    def default_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="upload-gateway s3-events"'}


class Forbidden(GatewayError):
    abstract = True
    status, code, message = 403, "forbidden", "The token does not allow this."


class CsrfMissing(Forbidden):
    code, message = (
        "csrf_missing",
        "A session cookie needs its CSRF token: the X-CSRF-TOKEN header, or a csrf_token "
        "field before the first file.",
    )


class CsrfInvalid(Forbidden):
    code, message = "csrf_invalid", "The CSRF token does not match the session."


class TicketTenant(Forbidden):
    code, message = "ticket_tenant", "A ticket may only be for its signer's own tenant."


class TicketProject(Forbidden):
    code, message = "ticket_project", "projectId differs from the ticket's project."


class TicketField(Forbidden):
    code, message = "ticket_field", "A field differs from the value the ticket fixes."


class ProjectForbidden(Forbidden):
    code, message = "project_forbidden", "The token does not allow this project."


class UploadFinal(Forbidden):
    code, message = "upload_final", "A final (concatenated) upload takes no more bytes."


class DeleteForbidden(Forbidden):
    code, message = "delete_forbidden", "Only the uploader or an admin may delete this media."


class NotFound(GatewayError):
    status, code, message = 404, "not_found", "Not found."


class MediaNotFound(NotFound):
    code, message = "media_not_found", "No such media."


class UploadNotFound(NotFound):
    code, message = "upload_not_found", "No such upload."


class MethodNotAllowed(GatewayError):
    status, code, message = 405, "method_not_allowed", "The method is not allowed for this URL."


class RequestRejected(GatewayError):
    """Another HTTP-level refusal of the web framework (its status is kept)."""

    status, code, message = 400, "request_rejected", "The request was rejected."

    def __init__(self, message: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]


class UploadGone(GatewayError):
    status, code, message = 410, "upload_gone", "The upload expired before it was finished."


class TusVersionUnsupported(GatewayError):
    status, code, message = 412, "tus_version_unsupported", "Tus-Resumable must be 1.0.0."

    def default_headers(self) -> dict[str, str]:
        return {"Tus-Version": "1.0.0"}


class UploadLocked(GatewayError):
    status, code, message = 423, "upload_locked", "Another request is writing this upload."


class TusChecksumMismatch(GatewayError):
    status, code, message = (
        460,
        "tus_checksum_mismatch",
        ("The chunk's checksum does not match Upload-Checksum; it was discarded."),
    )


class BodyTimeout(GatewayError):
    status, code, message = 408, "body_timeout", "The body arrived too slowly; nothing was kept."


# -- 409 / 410: state ----------------------------------------------------------------------------
class Conflict(GatewayError):
    abstract = True
    status, code, message = 409, "conflict", "The request conflicts with the current state."


class UploadOffsetMismatch(Conflict):
    code, message = "upload_offset_mismatch", "Upload-Offset is not the upload's offset."


class IdempotencyInProgress(Conflict):
    code, message = (
        "idempotency_in_progress",
        "A request with this Idempotency-Key is still running.",
    )


class TicketUsed(Conflict):
    code, message = "ticket_used", "The upload ticket was already used for another upload."


class TicketInProgress(Conflict):
    code, message = (
        "ticket_in_progress",
        "Another post with this upload ticket is still running.",
    )


class RecordExists(Conflict):
    code, message = "record_exists", "A record with this id already exists."


class RecordChanged(Conflict):
    code, message = (
        "record_changed",
        "A record this request depends on changed meanwhile; try again.",
    )


class UploadChanged(Conflict):
    code, message = (
        "upload_changed",
        "The uploaded object changed while it was being checked; complete again.",
    )


class UploadIncomplete(Conflict):
    code, message = "upload_incomplete", "Nothing has been uploaded yet."


class UploadAborted(Conflict):
    code, message = "upload_aborted", "The upload was aborted."


class UploadExpired(Conflict):
    code, message = "upload_expired", "The upload has expired."


class UploadStored(Conflict):
    code, message = "upload_stored", "The upload is already stored."


class UploadIdMismatch(Conflict):
    code, message = (
        "upload_id_mismatch",
        "This upload goes on in another S3 multipart upload (or S3 does not know this one).",
    )


class UploadAlreadyRejected(Conflict):
    code, message = "upload_already_rejected", "The upload was already rejected."


class IllegalTransition(Conflict):
    code, message = (
        "illegal_transition",
        "The media cannot move to that status from its current one.",
    )


# -- 411 / 413 / 415 / 422 / 429: the upload itself ---------------------------------------------
class LengthRequired(GatewayError):
    status, code, message = (
        411,
        "length_required",
        "Content-Length or chunked encoding is required.",
    )


class TooLarge(GatewayError):
    status, code, message = 413, "too_large", "The upload is larger than allowed."


class QuotaExceeded(TooLarge):
    code, message = "quota_exceeded", "The quota of this project or tenant would be exceeded."


class FormLimit(TooLarge):
    code, message = "form_limit", "The form has more parts, fields or header bytes than allowed."


class UnsupportedType(GatewayError):
    status, code, message = 415, "unsupported_type", "The file type is not allowed."


class UnsupportedTransferEncoding(GatewayError):
    status, code, message = (
        415,
        "unsupported_transfer_encoding",
        "A part's Content-Transfer-Encoding is not base64, quoted-printable, 7bit, 8bit or binary.",
    )


class Unprocessable(GatewayError):
    abstract = True
    status, code, message = 422, "unprocessable", "The upload could not be accepted."


class TusContentType(GatewayError):
    status, code, message = (
        415,
        "tus_content_type",
        ("A PATCH body must be Content-Type: application/offset+octet-stream."),
    )


class EmptyFile(Unprocessable):
    code, message = "empty_file", "Empty files are not accepted."


class ChecksumMismatch(Unprocessable):
    code, message = "checksum_mismatch", "The file's SHA-256 does not match the sha256 field."


class InvalidSize(Unprocessable):
    code, message = "invalid_size", "size must be a positive integer (empty files are refused)."


class UploadRejected(Unprocessable):
    code, message = "upload_rejected", "What S3 holds is not what was promised."


class IdempotencyKeyMismatch(Unprocessable):
    code, message = (
        "idempotency_key_mismatch",
        "This Idempotency-Key was used for a different request.",
    )


class TooManyPending(GatewayError):
    status, code, message = (
        429,
        "too_many_pending",
        "Too many direct uploads are pending; finish some first.",
    )

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "60"}


# -- 5xx: the gateway's dependencies -------------------------------------------------------------
class DirectUploadsUnavailable(GatewayError):
    status, code, message = (
        501,
        "direct_uploads_unavailable",
        "Direct uploads need S3 storage (GATEWAY_STORAGE_URL=s3://...).",
    )


class TicketsUnavailable(GatewayError):
    status, code, message = (
        501,
        "tickets_unavailable",
        "Upload tickets need a key (GATEWAY_TICKET_SECRET, or an HS256 GATEWAY_JWT_SECRET).",
    )


class UpstreamUnavailable(GatewayError):
    """Rendered by nginx (nginx/gateway.conf) when the gateway does not answer at all."""

    status, code, message = 502, "upstream_unavailable", "The upload service is unavailable."


class StorageError(GatewayError):
    status, code, message = 502, "storage_error", "The object store failed; nothing was kept."


class StorageCorrupted(StorageError):
    """The store refused a body as not matching its checksum (BadDigest), or answered an ETag
    that is not the MD5 the gateway sent (gateway/storage/integrity.py): the bytes were changed
    between the gateway and the store. Retrying the upload may succeed."""

    status, code, message = (
        502,
        "storage_corrupted",
        "The object store did not receive the bytes sent; nothing was kept. Retry the upload.",
    )


class StorageUnavailable(StorageError, _Retryable):
    """Throttling or unavailability, once retries are spent: worth retrying later."""

    status, code, message = (
        503,
        "storage_unavailable",
        "The object store is unavailable; retry later.",
    )


class InsufficientStorage(StorageError, _Retryable):
    """The node's staging directory (gateway/storage/staging.py) had no room for a slow upload's
    part: the upload is rolled back (its staged files removed, its multipart upload aborted)."""

    status, code, message = (
        507,
        "insufficient_storage",
        "The gateway has no room to stage the upload; nothing was kept. Retry later.",
    )


class ShuttingDown(_Retryable):
    """A graceful stop ended the body (gateway/http/shutdown.py); another instance will take it."""

    status, code, message = (
        503,
        "shutting_down",
        "The gateway is restarting; nothing was kept. Retry the upload.",
    )


class TooManyStreams(_Retryable):
    status, code, message = 503, "too_many_streams", "Too many live status streams; poll instead."


class RecordStoreError(_Retryable):
    status, code, message = 503, "records_unavailable", "The record store failed; nothing was kept."


for _cls in list(globals().values()):
    if (
        isinstance(_cls, type)
        and issubclass(_cls, GatewayError)
        and _cls is not GatewayError
        and not _cls.__name__.startswith("_")
        and not _cls.__dict__.get("abstract")
    ):
        _declare(_cls)
