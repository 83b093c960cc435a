"""Reading a request body: the server's stream, with its failures turned into domain errors.

A client that goes away mid-body is a *short read* under gunicorn, not an exception; the
protocols count bytes against Content-Length (and require the closing boundary) to notice.
Errors the server's reader does raise (bad chunk framing, a closed socket) become
``ClientDisconnected``. No Flask here: the route hands in ``request.stream``.
"""

from __future__ import annotations

from typing import IO, Protocol


class BodyReader(Protocol):
    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the body."""


class StreamBody:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def read(self, size: int) -> bytes:
        from . import errors

        try:
            return self.stream.read(size)
        except errors.GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the server's body reader
            raise errors.ClientDisconnected(
                f"The body could not be read ({type(exc).__name__})."
            ) from None
