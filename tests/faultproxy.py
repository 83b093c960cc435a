"""A small threaded HTTP reverse proxy that injects faults between the gateway and moto.

    proxy = FaultProxy(moto_url).start()
    rule = proxy.add(is_upload_part, "503", times=2)   # first two UploadPart requests: SlowDown
    ... point the gateway at proxy.url ...
    assert rule.hits == 2
    proxy.stop()

Actions:
  "500"              answer 500 InternalError (an S3 XML error body), request not forwarded
  "503"              answer 503 SlowDown, request not forwarded
  "403"              answer 403 AccessDenied, request not forwarded
  "bad_digest"       answer 400 BadDigest, as AWS S3 (and Ceph) answer a body that does not
                     match its Content-MD5 or x-amz-checksum-*; request not forwarded
  "flip"             forward the request with one byte of its body changed (the middle one,
                     XOR 0x01), headers untouched: corruption in flight that TCP missed
  "reset"            read the whole request, then reset the connection (SO_LINGER 0 + close)
  "forward_reset"    forward the request (it takes effect upstream), then reset the connection:
                     the answer is lost, as after a timeout or a dropped connection
  "busy"             answer as a gateway does when it cannot take a request now: 503, a JSON
                     error body and ``Retry-After: BUSY_RETRY_AFTER`` (to put it in front of
                     the gateway itself), request not forwarded
Everything that matches no active rule is forwarded unchanged. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}

S3_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "AccessDenied", "Access Denied"),
    "bad_digest": (
        400,
        "BadDigest",
        "The Content-MD5 you specified did not match what we received.",
    ),
}


BUSY_RETRY_AFTER = 2


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    at: float = field(default_factory=time.monotonic)  # when the proxy had read it

    @property
    def target(self) -> str:
        """The DynamoDB operation (X-Amz-Target suffix), or ''."""
        return self.headers.get("x-amz-target", "").rpartition(".")[2]


Matcher = Callable[[Request], bool]


@dataclass
class Rule:
    match: Matcher
    action: str
    times: int | None  # None: every matching request
    hits: int = 0
    seen: int = 0  # matching requests, faulted or not

    def take(self, request: Request) -> bool:
        """Count a matching request; True when this one is to be faulted."""
        if not self.match(request):
            return False
        self.seen += 1
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


# -- matchers for the S3 and DynamoDB operations the gateway uses ---------------------------------
def is_upload_part(r: Request) -> bool:
    return r.method == "PUT" and "partNumber" in r.query


def is_put_object(r: Request) -> bool:
    return (
        r.method == "PUT"
        and "partNumber" not in r.query
        and "tagging" not in r.query
        and r.path.count("/") >= 2
    )


def is_create_multipart(r: Request) -> bool:
    return r.method == "POST" and "uploads" in r.query


def is_complete_multipart(r: Request) -> bool:
    return r.method == "POST" and "uploadId" in r.query


def is_abort_multipart(r: Request) -> bool:
    return r.method == "DELETE" and "uploadId" in r.query


def is_put_tagging(r: Request) -> bool:
    return r.method == "PUT" and "tagging" in r.query


def is_delete_object(r: Request) -> bool:
    return r.method == "DELETE" and "uploadId" not in r.query and r.path.count("/") >= 2


def is_dynamodb(operation: str) -> Matcher:
    return lambda r: r.method == "POST" and r.target == operation


@dataclass
class _State:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set = field(default_factory=set)


def flipped(body: bytes) -> bytes:
    """``body`` with its middle byte changed (an empty body stays empty)."""
    if not body:
        return body
    changed = bytearray(body)
    changed[len(body) // 2] ^= 0x01
    return bytes(changed)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" is answered for us
    timeout = 60
    server: _Server

    def log_message(self, format: str, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.state.lock:
                self.server.state.connections.discard(self.connection)

    def _dispatch(self) -> None:
        state = self.server.state
        body = self._read_body()
        split = urlsplit(self.path)
        request = Request(
            self.command,
            split.path,
            parse_qs(split.query, keep_blank_values=True),
            {k.lower(): v for k, v in self.headers.items()},
        )
        action = None
        with state.lock:
            state.log.append(request)
            for rule in state.rules:
                if rule.take(request):
                    action = rule.action
                    break
        if action is None:
            self._forward(body)
        elif action == "reset":
            self._reset()
        elif action == "forward_reset":
            self._forward(body, answer=False)
            self._reset()
        elif action == "busy":
            self._busy()
        elif action == "flip":
            self._forward(flipped(body))
        elif action in S3_ERRORS:
            self._s3_error(*S3_ERRORS[action])
        else:
            raise ValueError(f"unknown action {action!r}")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes, *, answer: bool = True) -> None:
        host, port = self.server.state.upstream
        upstream = http.client.HTTPConnection(host, port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            payload = response.read()
            headers = response.getheaders()
            status, reason = response.status, response.reason
        finally:
            upstream.close()
        if not answer:
            return
        self.send_response(status, reason)
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in ("content-length", "date", "server"):
                continue
            self.send_header(name, value)
        if self.command == "HEAD":
            length = {k.lower(): v for k, v in headers}.get("content-length", "0")
            self.send_header("Content-Length", length)
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def _s3_error(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _busy(self) -> None:
        body = (
            b'{"success": false, "error": {"code": "shutting_down", "message": "busy"},'
            b' "requestId": "faultproxy"}'
        )
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", str(BUSY_RETRY_AFTER))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the TCP connection: SO_LINGER 0, then close, so the peer sees a RST."""
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self.server.state.lock:
            self.server.state.connections.discard(sock)
        os.close(sock.detach())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address) -> None:
        pass  # clients that go away mid-request are part of the game


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._state = _State(upstream=(parts.hostname or "127.0.0.1", parts.port or 80))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._server = _Server(self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faultproxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._state.lock:
            connections = list(self._state.connections)
            self._state.connections.clear()
        for sock in connections:  # wake handler threads parked on keep-alive connections
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        assert self._thread is not None
        self._thread.join(10)
        self._server = None

    def add(self, match: Matcher, action: str, *, times: int | None = None) -> Rule:
        """Fault the first ``times`` matching requests (every one when None)."""
        if action not in S3_ERRORS and action not in ("reset", "forward_reset", "busy", "flip"):
            raise ValueError(f"unknown action {action!r}")
        rule = Rule(match, action, times)
        with self._state.lock:
            self._state.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._state.lock:
            self._state.rules.clear()
            self._state.log.clear()

    def requests(self, match: Matcher | None = None) -> list[Request]:
        with self._state.lock:
            return [r for r in self._state.log if match is None or match(r)]
