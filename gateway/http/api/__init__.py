"""The HTTP edge: thin blueprints over the Flask-free services."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import errors, metrics
from gateway.http.bodies import BodyLimits, GuardedBody, guarded_body
from gateway.services import Services


def services() -> Services:
    return cast(Services, current_app.extensions["gateway"])


@contextmanager
def upload_body(protocol: Literal["form", "tus"]) -> Iterator[GuardedBody]:
    """This request's body for an upload route: counted in flight, read within the deadlines."""
    gateway = services()
    space = gateway.storage.space
    with (
        metrics.upload_in_flight(protocol),
        guarded_body(
            request.environ,
            request.stream,
            BodyLimits.of(gateway.settings),
            space.budget if space is not None else None,
        ) as body,
    ):
        yield body


MAX_JSON_BYTES = 256 * 1024


def json_body(*, required: bool, any_type: bool = False) -> Any:
    """The JSON body, at most MAX_JSON_BYTES whether sized or chunked (cut as it grows).
    ``any_type``: whatever the Content-Type says (a pusher's, not a client's, body)."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise errors.TooLarge("The JSON body is too large.")
    # werkzeug limits a chunked stream to this (a sized one to its Content-Length) but ends
    # it silently at the limit, so read one byte past the allowance to tell "too large" apart.
    request.max_content_length = MAX_JSON_BYTES + 1
    data = bytearray()
    try:
        while len(data) <= MAX_JSON_BYTES:
            chunk = request.stream.read(MAX_JSON_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except RequestEntityTooLarge:
        raise errors.TooLarge("The JSON body is too large.") from None
    if len(data) > MAX_JSON_BYTES:
        raise errors.TooLarge("The JSON body is too large.")
    if not data and not required:
        return {}  # no body (none sent, or an empty chunked one)
    try:  # bad JSON is answered, never ignored
        body = json.loads(data) if request.is_json or any_type else None
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        body = None
    if body is None:
        raise errors.InvalidJson()
    if _has_lone_surrogate(body):
        # JSON may escape half a UTF-16 pair ("\ud800"): not text, and it cannot be encoded
        # into the S3 headers, records and answers it would reach (I-JSON, RFC 7493, refuses it).
        raise errors.InvalidJson("The JSON body holds an unpaired surrogate (\\ud800-\\udfff).")
    return body


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in a parsed JSON document cannot be UTF-8 encoded."""
    pending = [value]
    while pending:  # no recursion: the document may be nested as deep as the parser allows
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return False
