"""Virus scanning through clamd's INSTREAM protocol (``GATEWAY_CLAMD_URL``).

The protocol is small and spoken directly (the PyPI clients are unmaintained): ``zINSTREAM\\0``,
then chunks each prefixed by their length as a 4-byte big-endian integer, then a zero length;
clamd answers ``stream: OK``, ``stream: <signature> FOUND`` or ``... ERROR``. Anything but an
explicit OK or FOUND is a ``ScanError``, never "clean": a connection reset, a timeout, and the
size limit (over ``StreamMaxLength`` clamd closes the socket mid-stream and says "INSTREAM size
limit exceeded").
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

CHUNK = 64 * 1024


class ScanError(RuntimeError):
    """The scanner could not give a verdict; retry later, never treat the file as clean."""


@dataclass(frozen=True)
class Verdict:
    clean: bool
    signature: str = ""  # what was found, when not clean


class Scanner(Protocol):
    def scan(self, chunks: Iterable[bytes]) -> Verdict: ...

    def ping(self) -> None:
        """Raise ScanError unless the scanner answers (readiness)."""


class ClamdScanner:
    def __init__(self, url: str, *, timeout: float) -> None:
        parsed = urlparse(url)
        if parsed.scheme == "unix":
            self.address: str | tuple[str, int] = parsed.path
            self.family = socket.AF_UNIX
        elif parsed.scheme == "tcp" and parsed.hostname and parsed.port:
            self.address = (parsed.hostname, parsed.port)
            self.family = socket.AF_INET
        else:
            raise ValueError(f"not a clamd URL (unix:///path or tcp://host:port): {url!r}")
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise ScanError(f"clamd is unreachable: {exc}") from exc
        return sock

    @staticmethod
    def _reply(sock: socket.socket) -> str:
        data = b""
        while not data.endswith(b"\0"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.rstrip(b"\0").decode("utf-8", "replace").strip()

    def ping(self) -> None:
        with self._connect() as sock:
            try:
                sock.sendall(b"zPING\0")
                reply = self._reply(sock)
            except OSError as exc:
                raise ScanError(f"clamd did not answer PING: {exc}") from exc
        if reply != "PONG":
            raise ScanError(f"clamd answered PING with {reply!r}")

    def scan(self, chunks: Iterable[bytes]) -> Verdict:
        with self._connect() as sock:
            try:
                sock.sendall(b"zINSTREAM\0")
                for chunk in chunks:
                    for start in range(0, len(chunk), CHUNK):
                        piece = chunk[start : start + CHUNK]
                        sock.sendall(struct.pack(">I", len(piece)) + piece)
                sock.sendall(struct.pack(">I", 0))
            except OSError as exc:
                # clamd stops reading at its size limit and closes: its reply says why.
                reply = _reply_after_failure(sock)
                raise ScanError(f"clamd stopped the stream: {reply or exc}") from exc
            try:
                reply = self._reply(sock)
            except OSError as exc:
                raise ScanError(f"clamd did not answer: {exc}") from exc
        return parse_reply(reply)


def _reply_after_failure(sock: socket.socket) -> str:
    try:
        return ClamdScanner._reply(sock)
    except OSError:
        return ""


def parse_reply(reply: str) -> Verdict:
    if reply == "stream: OK":
        return Verdict(clean=True)
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        return Verdict(clean=False, signature=reply[len("stream: ") : -len(" FOUND")])
    raise ScanError(f"clamd gave no verdict: {reply!r}")
