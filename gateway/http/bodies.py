"""Reading a request body: the server's stream, with deadlines, its failures as domain errors.

A client that goes away mid-body is a *short read* under gunicorn, not an exception; the
protocols count bytes against Content-Length (and require the closing boundary) to notice.
Errors the server's reader does raise (bad chunk framing, a closed socket) become
``ClientDisconnected``.

Deadlines: a body that trickles in holds a worker connection for as long as it lasts. The guard
ends it with ``BodyTimeout`` (408) when no byte arrives for ``idle`` seconds, or when it falls
behind ``min_rate``: the body starts with ``grace`` seconds of credit, every byte earns
1/min_rate s more, and at most ``grace`` seconds can be banked (so a fast start cannot buy an
hour of trickling, as an average since the start would). Only time spent waiting for the client
counts: the gateway's own work (storage writes, its backpressure) is not held against it.

A graceful stop (gateway/http/shutdown.py) is one more deadline: once the stop's upload grace has
passed, the next read or wait ends the body with ``ShuttingDown`` (503), and the upload rolls back.

Why per ``recv()``: gunicorn's ``Body.read(n)`` returns only once ``n`` bytes (or the end) have
arrived, looping over ``recv()``. A socket timeout bounds each ``recv()``, which is exactly the
idle limit, but a rate check between the service's 1 MiB reads would see nothing until a whole
MiB had come, i.e. never for a trickle. So under gunicorn the guard wraps the socket that
gunicorn's body reader receives from, and before each ``recv()`` sets the socket timeout to what
the limits leave: min(idle, rate credit left). This leans on gunicorn's reader internals
(``wsgi.input.reader.unreader.sock``); the end-to-end tests run real gunicorn (gevent and
gthread) and would catch a change. Elsewhere (the Flask test client, another server) only the
rate check between reads applies.

No Flask here: the route hands in the WSGI environ and ``request.stream``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import select
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from gunicorn.http.body import LengthReader

from gateway import errors
from gateway.config import Settings
from gateway.http import shutdown
from gateway.storage.staging import MemoryBudget, unlimited

log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN_HELD = 64 * 1024  # a read's size when the socket cannot say how much it holds


@dataclass(frozen=True)
class BodyLimits:
    idle: float  # seconds without a byte
    min_rate: int  # bytes per second of waiting; 0: no rate check
    grace: float  # seconds of credit at the start, and the most that can be banked
    shutdown_grace: float = 60.0  # after a graceful stop begins, bodies end this much later

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(
            idle=settings.body_idle_timeout,
            min_rate=settings.body_min_rate,
            grace=settings.body_rate_grace,
            shutdown_grace=settings.shutdown_upload_grace,
        )


class Readable(Protocol):
    def read(self, size: int) -> bytes | bytearray: ...


class BodyTimedOut(TimeoutError):
    """Raised from the guarded ``recv()``; gunicorn's body reader passes it on unchanged."""


class BodyGuard:
    def __init__(self, limits: BodyLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.received = 0  # bytes received (by recv: chunk framing included)
        self.waited = 0.0  # seconds spent waiting for the client
        self.credit = limits.grace  # waiting allowed before the rate check fails
        self.expired: str | None = None  # "idle" or "rate" once a limit has ended the body

    def budget(self) -> tuple[float, str]:
        """How long the next wait may last, and which limit would end it."""
        wait, reason = self.limits.idle, "idle"
        if self.limits.min_rate and self.credit - self.waited < wait:
            wait, reason = self.credit - self.waited, "rate"
        end = shutdown.uploads_end_at(self.limits.shutdown_grace)
        if end is not None:
            left = end - self.clock()
            if left < wait:
                wait, reason = left, "shutdown"
        return wait, reason

    def check_shutdown(self) -> None:
        end = shutdown.uploads_end_at(self.limits.shutdown_grace)
        if end is not None and self.clock() >= end:
            self.expire("shutdown")

    def account(self, waited: float, received: int) -> None:
        self.waited += waited
        self.received += received
        if self.limits.min_rate:
            self.credit = min(
                self.credit + received / self.limits.min_rate, self.waited + self.limits.grace
            )

    def check_rate(self) -> None:
        if self.limits.min_rate and self.waited > self.credit:
            self.expire("rate")

    def expire(self, reason: str) -> None:
        self.expired = reason
        raise BodyTimedOut(reason)

    def error(self) -> errors.BodyTimeout | errors.ShuttingDown:
        if self.expired == "shutdown":
            return errors.ShuttingDown()
        if self.expired == "idle":
            why = f"No body bytes came for {self.limits.idle:g} s"
        else:
            why = (
                f"The body came slower than {self.limits.min_rate} bytes/s "
                f"({self.received} bytes in {self.waited:.0f} s of waiting)"
            )
        return errors.BodyTimeout(why + "; nothing was kept.")


class _GuardedSocket:
    """The socket as the body's reader sees it: every receive within the limits."""

    def __init__(self, sock: socket.socket, guard: BodyGuard) -> None:
        self._sock = sock
        self._guard = guard

    def recv(self, size: int, *flags: int) -> bytes:
        return self._within_limits(lambda: self._sock.recv(size, *flags), len)

    def recv_into(self, buffer: memoryview, size: int) -> int:
        return self._within_limits(lambda: self._sock.recv_into(buffer, size), int)

    def wait_readable(self) -> int:
        """Wait, within the limits and holding no buffer, until bytes (or the end) arrive; how
        many the socket holds now (0: the client closed; ``UNKNOWN_HELD`` when the socket
        cannot tell, and a receive then takes what is there, up to that)."""
        peeked = self._within_limits(lambda: self._sock.recv(1, socket.MSG_PEEK), lambda _: 0)
        if not peeked:
            return 0
        return max(1, self._held())

    def gather(self, want: int, most: float) -> int:
        """Wait up to ``most`` seconds (within the limits, holding no buffer) until the socket
        holds ``want`` bytes (``SO_RCVLOWAT``: the kernel wakes the wait then, not at every
        segment; a socket that ignores it, as a Unix socket's poll does, wakes at once); how
        many it holds then."""
        guard = self._guard
        wait = min(guard.budget()[0], most)
        if wait > 0:
            sock = self._sock
            started = guard.clock()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                waiter = select.poll()  # gevent's under its worker: this greenlet waits
                waiter.register(sock.fileno(), select.POLLIN)
                waiter.poll(wait * 1000)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            guard.account(guard.clock() - started, 0)
        return self._held()

    def received(self) -> int:
        return self._guard.received

    def pace(self) -> float:
        """Bytes per second of waiting that the client has sent so far (0 before any)."""
        guard = self._guard
        return guard.received / guard.waited if guard.waited > 0 else 0.0

    def _held(self) -> int:
        try:
            held = fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return int(struct.unpack("i", held)[0])
        except OSError:
            return UNKNOWN_HELD

    def _within_limits(self, receive: Callable[[], T], count: Callable[[T], int]) -> T:
        guard = self._guard
        wait, reason = guard.budget()
        if wait <= 0:
            guard.expire(reason)
        self._sock.settimeout(wait)
        started = guard.clock()
        try:
            received = receive()
        except TimeoutError:
            guard.account(guard.clock() - started, 0)
            guard.expire(reason)
        guard.account(guard.clock() - started, count(received))
        return received

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _LengthBody:
    """gunicorn's body of a request with a Content-Length, received straight into the buffer
    that each read returns.

    gunicorn's own reader copies every byte about five times on its way (the BytesIO buffers of
    its Unreader and Body, their joins and slices): 13% of the CPU of a 64 MiB upload, measured.
    Here each arrival is one ``recv_into`` a fresh bytearray (fresh: bytes a caller still holds
    are never overwritten). What gunicorn received along with the headers is handed out first,
    and its reader's remaining length is kept exact, so that whatever reads the body afterwards
    (the lingering drain of a refused upload) reads only what is left; read-ahead not handed out
    goes back to gunicorn when the body is closed.

    Each read is sized to what has arrived: it waits until the socket holds bytes (or the end)
    holding no buffer and none of the budget, then allocates one buffer of what the socket holds
    (at most ``size``) and fills it with one receive, so it never waits for more. A fast
    client's backlog, which on a busy gateway is ``size`` and more, still comes in few large
    reads; a slow client's read takes the few KiB that came, and its connection holds nothing
    between reads (a 64 KiB read buffer filled at 4 KiB/s was held for 16 s: with thousands of
    slow uploads, most of the worker's heap; docs/benchmarks.md, "Slow uploads, held"). The
    buffer's bytes are taken from the memory budget (waiting for room there is the
    back-pressure: the socket is not read meanwhile) and given back at the next read.

    When less than ``GATHER_BYTES`` has arrived, the read first waits up to ``GATHER_WAIT`` for
    that much, still holding nothing (the bytes wait in the kernel's socket buffer): a fast
    client whose bytes the gateway keeps up with still comes in 64 KiB reads (every read goes
    through the parser, the hash and the writer: 256 uploads of 1 MiB took 12% more CPU per
    GiB with reads of what had arrived). After a body's first read, only a client whose pace so
    far would bring the rest within the wait waits (64 KiB in 20 ms: 3.2 MiB/s); a slower one's
    read takes what came at once (the wait, a poll of the socket, would cost CPU on every read
    and bring nothing)."""

    GATHER_BYTES = 64 * 1024
    GATHER_WAIT = 0.02

    def __init__(
        self, body: Any, unreader: Any, sock: _GuardedSocket, budget: MemoryBudget, wait: float
    ) -> None:
        self._reader = body.reader
        self._unreader = unreader
        self._sock = sock
        self._ahead: bytes = unreader.take_buffered()
        self._budget = budget
        self._wait = wait  # at most this long for room in the budget
        self.held = 0  # bytes of the budget this body's last read holds

    def release(self) -> None:
        held, self.held = self.held, 0
        self._budget.release(held)

    def read(self, size: int) -> bytes | bytearray:
        reader = self._reader
        size = min(size, reader.length)
        self.release()
        if size <= 0:
            return b""
        if self._ahead:
            data, self._ahead = self._ahead[:size], self._ahead[size:]
            reader.length -= len(data)
            return data
        arrived = self._sock.wait_readable()
        if not arrived:
            return b""  # the client closed: a short body, which the protocols notice
        want = min(size, self.GATHER_BYTES)
        if arrived < want and self._may_gather(want - arrived):
            arrived = max(arrived, self._sock.gather(want, self.GATHER_WAIT))
        size = self.held = self._budget.reserve_read(min(size, arrived), timeout=self._wait)
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            filled = self._sock.recv_into(view, size)
        reader.length -= filled
        if filled < size:  # the client closed, or the socket held less than it said
            self._budget.release(size - filled)
            self.held = filled
            del buffer[filled:]
        return buffer

    def _may_gather(self, short: int) -> bool:
        """Whether the client may send ``short`` bytes more within ``GATHER_WAIT``: its pace is
        not known yet (the body's first read), or is fast enough."""
        sock = self._sock
        return sock.received() == 0 or sock.pace() * self.GATHER_WAIT >= short

    def close(self) -> None:
        self.release()
        if self._ahead:
            self._unreader.unread(self._ahead)
            self._ahead = b""


class GuardedBody:
    """The body for the protocols: ``read`` raises BodyTimeout or ClientDisconnected."""

    def __init__(self, stream: Readable, guard: BodyGuard, *, per_recv: bool) -> None:
        self._stream = stream
        self.guard = guard
        self._per_recv = per_recv

    def read(self, size: int) -> bytes | bytearray:
        guard = self.guard
        try:
            guard.check_shutdown()
        except BodyTimedOut:
            raise guard.error() from None
        started = guard.clock()
        try:
            data = self._stream.read(size)
        except errors.GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the server's body reader
            if guard.expired is None and _caused_by_timeout(exc):
                guard.expired = "idle"
            if guard.expired is not None:
                raise guard.error() from None
            raise errors.ClientDisconnected(
                f"The body could not be read ({type(exc).__name__})."
            ) from None
        if not self._per_recv:
            guard.account(guard.clock() - started, len(data))
            try:
                guard.check_rate()
            except BodyTimedOut:
                raise guard.error() from None
        return data


def _caused_by_timeout(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:  # werkzeug may wrap it (ClientDisconnected)
        if isinstance(exc, TimeoutError | BodyTimedOut):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class _CountedBody:
    """A body read through the server's own reader (chunked, or one whose first bytes gunicorn
    had buffered): each read's size is taken from the memory budget before reading, since the
    reader fills a buffer of that size as the bytes come, and given back at the next read."""

    def __init__(self, stream: Readable, budget: MemoryBudget, wait: float) -> None:
        self._stream = stream
        self._budget = budget
        self._wait = wait
        self.held = 0

    def release(self) -> None:
        held, self.held = self.held, 0
        self._budget.release(held)

    def read(self, size: int) -> bytes | bytearray:
        self.release()
        if size <= 0:
            return b""
        size = self.held = self._budget.reserve_read(size, timeout=self._wait)
        return self._stream.read(size)


def _unreader_of(body: Any) -> Any:
    """gunicorn's SocketUnreader behind ``wsgi.input`` (LengthReader, ChunkedReader, EOFReader)."""
    reader = getattr(body, "reader", None)
    return getattr(reader, "unreader", None) or getattr(
        getattr(reader, "req", None), "unreader", None
    )


@contextlib.contextmanager
def guarded_body(
    environ: dict[str, Any],
    stream: IO[bytes],
    limits: BodyLimits,
    budget: MemoryBudget | None = None,
) -> Iterator[GuardedBody]:
    """The request's body with the deadlines applied, its reads within the memory ``budget``;
    the socket is restored afterwards."""
    guard = BodyGuard(limits)
    sock = environ.get("gunicorn.socket")
    server_body = environ.get("wsgi.input")
    unreader = _unreader_of(server_body)
    per_recv = isinstance(sock, socket.socket) and getattr(unreader, "sock", None) is sock
    previous = sock.gettimeout() if isinstance(sock, socket.socket) else None
    direct: _LengthBody | _CountedBody | None = None
    if per_recv and isinstance(sock, socket.socket):
        guarded = _GuardedSocket(sock, guard)
        if (
            stream is server_body
            and isinstance(getattr(server_body, "reader", None), LengthReader)
            and not server_body.buf.tell()  # type: ignore[attr-defined]
        ):
            direct = _LengthBody(server_body, unreader, guarded, budget or unlimited(), limits.idle)
        else:
            unreader.sock = guarded
    elif isinstance(sock, socket.socket):
        sock.settimeout(limits.idle)
        log.debug("body guard: gunicorn's reader not found; the idle limit applies per read")
    if direct is None and budget is not None:
        direct = _CountedBody(stream, budget, limits.idle)
    try:
        yield GuardedBody(direct or stream, guard, per_recv=per_recv)
    finally:
        if isinstance(direct, _LengthBody):
            direct.close()
        else:
            if direct is not None:
                direct.release()
            if per_recv:
                unreader.sock = sock
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.settimeout(previous)
