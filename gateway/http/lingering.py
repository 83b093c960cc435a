"""Lingering close for refused uploads.

An upload refused early (401, 413, ...) is answered without reading its body. If the server
then closes a socket with unread bytes in it, the kernel resets the connection, and a proxy
still relaying the body (nginx with request buffering off) fails its next write and answers
502 instead of our answer. So after the answer has gone out, read and discard what is left,
for a bounded time: a proxy closes as soon as it has the answer, so this ends almost at once.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from flask import Response

LINGER_SECONDS = 1.0  # bounded: each lingering refusal holds a worker thread this long at most
LINGER_BYTES = 16 * 1024 * 1024
READ_SIZE = 256 * 1024


def drain_after_response(response: Response, environ: dict[str, Any]) -> None:
    stream = environ.get("wsgi.input")
    sock = environ.get("gunicorn.socket")
    if stream is None:
        return

    def drain() -> None:
        deadline, budget = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        previous = sock.gettimeout() if isinstance(sock, socket.socket) else None
        try:
            if isinstance(sock, socket.socket):
                sock.settimeout(0.25)
            while budget > 0 and time.monotonic() < deadline:
                chunk = stream.read(READ_SIZE)
                if not chunk:
                    break
                budget -= len(chunk)
        except Exception:  # noqa: BLE001, S110 - the peer closed or timed out: we are done
            pass
        finally:
            if isinstance(sock, socket.socket):
                try:
                    sock.settimeout(previous)
                except OSError:
                    pass

    response.call_on_close(drain)
