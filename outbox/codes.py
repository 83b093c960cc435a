"""What each of the gateway's error codes means for the outbox: retry, start again, or stop.

The gateway answers every refusal with ``{"error": {"code", "message"}}``; the code says more
than the status: a 409 is sometimes "wait" (``idempotency_in_progress``) and sometimes "this will
never work" (``record_exists``); 460 ``tus_checksum_mismatch`` is a chunk damaged on the way and
worth sending again. The status decides only when the answer carries no code we know (a proxy's
error page, a newer gateway). ``tests/test_outbox.py`` checks this table names every code the
gateway declares (``gateway/errors.py``); the outbox itself imports nothing of the server.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    RETRY = "retry"  # this attempt failed; a later one may succeed
    RESTART = "restart"  # the tus upload is gone: create a new one (with a new key)
    STORED = "stored"  # the tus upload is already stored: read its record
    TOKEN = "token"  # noqa: S105 (the token is refused: no item can go on)
    FAIL = "fail"  # the request itself is refused: retrying cannot help


_RETRY = (
    "client_disconnected",  # our body was cut on the way (a network drop)
    "body_timeout",
    "idempotency_in_progress",  # our first request with this key still runs
    "ticket_in_progress",  # (upload tickets are forms', never the outbox's)
    "upload_locked",
    "upload_offset_mismatch",  # resume from the offset the gateway reports
    "upload_changed",
    "record_changed",  # a tus final whose partial moved meanwhile: nothing was kept
    "tus_checksum_mismatch",  # a chunk damaged on the way: the gateway discarded it
    "too_many_pending",
    "internal_error",
    "storage_error",
    "storage_corrupted",  # our bytes were changed on the way to the store: nothing was kept
    "upstream_unavailable",
    "records_unavailable",
    "shutting_down",
    "storage_unavailable",
    "insufficient_storage",  # the gateway's staging disk was full: nothing was kept
    "too_many_streams",
)
_RESTART = ("upload_not_found", "upload_gone", "upload_expired", "upload_aborted")
_TOKEN = ("invalid_token", "missing_token", "token_expired", "ticket_invalid", "ticket_expired")
_FAIL = (
    "bad_content_type",
    "invalid_cursor",
    "invalid_files",
    "invalid_idempotency_key",
    "invalid_json",
    "invalid_limit",
    "invalid_part_range",
    "invalid_parts",
    "invalid_project_id",
    "invalid_redirect",
    "invalid_sha256",
    "invalid_sign_request",
    "invalid_status",
    "invalid_tus_header",
    "invalid_wait",
    "malformed_body",
    "missing_project_id",
    "no_file",
    "request_rejected",
    "unexpected_file_field",
    "unsupported_checksum",
    "csrf_invalid",
    "csrf_missing",
    "delete_forbidden",
    "project_forbidden",
    "upload_final",
    "media_not_found",
    "not_found",
    "method_not_allowed",
    "illegal_transition",
    "record_exists",
    "upload_already_rejected",
    "upload_id_mismatch",
    "upload_incomplete",
    "length_required",
    "tus_version_unsupported",
    "form_limit",
    "quota_exceeded",  # needs the user (or an admin): `outbox retry` once there is room
    "too_large",
    "tus_content_type",
    "unsupported_type",
    "unsupported_transfer_encoding",
    "checksum_mismatch",  # the queued copy is not what was hashed at push: never resend it
    "empty_file",
    "idempotency_key_mismatch",
    "invalid_size",
    "upload_rejected",
    "direct_uploads_unavailable",
    "invalid_ticket_request",
    "ticket_tenant",
    "ticket_project",
    "ticket_field",
    "ticket_used",
    "tickets_unavailable",
    "invalid_event",  # (bucket notifications are the object store's, never the outbox's)
    "event_secret_invalid",
)

CODE_OUTCOMES: dict[str, Outcome] = {
    **dict.fromkeys(_RETRY, Outcome.RETRY),
    **dict.fromkeys(_RESTART, Outcome.RESTART),
    **dict.fromkeys(_TOKEN, Outcome.TOKEN),
    **dict.fromkeys(_FAIL, Outcome.FAIL),
    "upload_stored": Outcome.STORED,
}

RETRYABLE_STATUSES = frozenset({408, 409, 423, 425, 429, 460})
GONE_STATUSES = frozenset({404, 410})


def outcome(status: int, code: str | None, *, tus: bool = False) -> Outcome:
    """The outcome of a non-2xx answer: by its code when known, else by its status.

    ``tus``: the request was a HEAD or PATCH on a tus upload, where a 404 or 410 without a known
    code still means the upload is gone."""
    known = CODE_OUTCOMES.get(code) if code else None
    if known is not None:
        return known
    if status == 401:
        return Outcome.TOKEN
    if tus and status in GONE_STATUSES:
        return Outcome.RESTART
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome.RETRY
    return Outcome.FAIL
