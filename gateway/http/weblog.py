"""Request ids, the one JSON error renderer, and one structured log line per request."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway import errors, metrics
from gateway.config import Settings

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("gateway.access")
error_log = logging.getLogger("gateway.error")

# The web framework's own refusals, in the gateway's vocabulary (anything else: request_rejected).
_HTTP_ERRORS: dict[int, type[errors.GatewayError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.TooLarge,
}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            return json.dumps(record.msg, separators=(",", ":"))
        line = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def init_app(app: Flask, settings: Settings) -> None:
    root = logging.getLogger("gateway")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(settings.log_level.upper())

    @app.before_request
    def start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        g.started = time.monotonic()
        g.log = {}

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        seconds = elapsed()
        fields = g.get("log", {})
        line = {
            "event": "request",
            "requestId": g.get("request_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "durationMs": round(seconds * 1000, 1),
            **fields,
        }
        access_log.info(line)
        outcome = str(fields.get("outcome", response.status_code))
        rule = request.url_rule
        route = rule.rule if rule is not None else metrics.UNMATCHED_ROUTE
        metrics.observe_request(request.method, route, response.status_code, seconds, outcome)
        upload = g.get("upload")
        if upload is not None:
            metrics.observe_upload(
                upload["protocol"],
                upload.get("outcome", outcome),
                upload.get("bytes", 0),
                upload.get("seconds"),
            )
        return response

    @app.errorhandler(errors.GatewayError)
    def gateway_error(exc: errors.GatewayError) -> Response:
        if exc.status >= 500:
            error_log.error(
                "request %s failed: %s",
                g.get("request_id"),
                exc.code,
                exc_info=exc.__cause__ is not None,
            )
        return render(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        known = _HTTP_ERRORS.get(status)
        return render(known() if known else errors.RequestRejected(exc.description, status=status))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        error_log.exception("unhandled error, request %s", g.get("request_id"))
        return render(errors.GatewayError())


def render(exc: errors.GatewayError) -> Response:
    """The error as JSON; or, once a route said it answers a browser (a plain form post),
    as that route renders it (a page, or a redirect carrying the code)."""
    g.setdefault("log", {})["outcome"] = exc.code
    for_browser = g.get("render_for_browser")
    if for_browser is not None:
        response: Response = for_browser(exc)
    else:
        response = jsonify(exc.body(g.get("request_id")))
        response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


def note(**fields: Any) -> None:
    """Add fields to this request's log line."""
    g.setdefault("log", {}).update({k: v for k, v in fields.items() if v is not None})


def elapsed() -> float:
    """Seconds since this request started."""
    started: float = g.get("started", time.monotonic())
    return time.monotonic() - started


def note_upload(protocol: str, **fields: Any) -> None:
    """This request carries (part of) an upload: counted in the upload metrics when it ends,
    with the outcome noted here (``outcome``, ``bytes``, ``seconds``) or else its error code."""
    g.setdefault("upload", {"protocol": protocol}).update(fields)
