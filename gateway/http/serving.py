"""gunicorn integration: its own refusals in the gateway's JSON error shape.

gunicorn answers some requests before the app sees them (a malformed request line, header
fields over its limits, bad chunk framing, both Content-Length and Transfer-Encoding) with an
HTML page written by ``gunicorn.util.write_error``. gunicorn has no hook for that page, so
``install_json_error_pages`` replaces the function (from gunicorn.conf.py, in every process).
tests/test_e2e.py sends such requests to a real gunicorn, so an upgrade that changes this is
caught.
"""

from __future__ import annotations

import json
import socket

from gateway import errors


def json_error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response in the gateway's error shape (no request id exists yet)."""
    kind: type[errors.GatewayError] = (
        errors.GatewayError if status >= 500 and status != 501 else errors.RequestRejected
    )
    code = kind.code
    body = json.dumps(
        {
            "success": False,
            "error": {"code": code, "message": message or reason},
            "requestId": None,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def install_json_error_pages() -> None:
    from gunicorn import util

    def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
        detail = mesg if status_int < 500 else ""  # no internal text in a 5xx
        util.write_nonblock(sock, json_error_response(status_int, reason, detail))

    util.write_error = write_error
