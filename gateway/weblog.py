"""Request ids, the one JSON error renderer, and one structured log line per request."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import GatewayError

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("gateway.access")
error_log = logging.getLogger("gateway.error")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            return json.dumps(record.msg, separators=(",", ":"))
        line = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def init_app(app: Flask, settings) -> None:
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
        g.request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.started = time.monotonic()
        g.log = {}

    @app.after_request
    def finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        line = {"event": "request", "requestId": g.get("request_id"), "method": request.method,
                "path": request.path, "status": response.status_code,
                "durationMs": round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
                **g.get("log", {})}
        access_log.info(line)
        return response

    @app.errorhandler(GatewayError)
    def gateway_error(exc: GatewayError):
        g.setdefault("log", {})["outcome"] = exc.code
        return render(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        g.setdefault("log", {})["outcome"] = code
        return render(GatewayError(exc.description, code=code, status=exc.code or 500))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        error_log.exception("unhandled error, request %s", g.get("request_id"))
        g.setdefault("log", {})["outcome"] = "internal_error"
        return render(GatewayError())


def render(exc: GatewayError):
    response = jsonify(exc.body(g.get("request_id")))
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


def note(**fields) -> None:
    """Add fields to this request's log line."""
    g.setdefault("log", {}).update({k: v for k, v in fields.items() if v is not None})
