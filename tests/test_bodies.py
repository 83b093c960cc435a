"""Slow bodies: the guard's idle limit and minimum rate (unit, on a fake clock), and end to end
through real gunicorn (gevent, the default, and gthread), directly and through nginx: a slow body
is answered 408 body_timeout and leaves nothing, and slow clients do not starve the others."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway import errors
from gateway.http.bodies import BodyGuard, BodyLimits, BodyTimedOut, GuardedBody, _GuardedSocket

from e2e_harness import MiB, gateway_stack, poll, read_response, request_head
from support import assert_nothing_left, form_body, leftovers, png_bytes


# -- the guard, on a fake clock ----------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeSocket:
    """recv() takes ``delay`` seconds of the fake clock per script entry; None: times out."""

    def __init__(self, clock: FakeClock, script: list[tuple[float, bytes | None]]) -> None:
        self.clock, self.script, self.timeouts = clock, list(script), []

    def settimeout(self, value):
        self.timeouts.append(value)

    def recv(self, size, *flags):
        delay, data = self.script.pop(0)
        timeout = self.timeouts[-1]
        if data is None or delay > timeout:
            self.clock.now += timeout
            raise TimeoutError("timed out")
        self.clock.now += delay
        return data


def guard(clock, idle=5.0, min_rate=100, grace=10.0):
    return BodyGuard(BodyLimits(idle=idle, min_rate=min_rate, grace=grace), clock=clock)


def test_the_idle_limit_bounds_each_wait():
    clock = FakeClock()
    g = guard(clock)
    sock = _GuardedSocket(FakeSocket(clock, [(1, b"x" * 1000), (4.9, b"y"), (None, None)]), g)
    assert sock.recv(10) == b"x" * 1000 and sock.recv(10) == b"y"
    with pytest.raises(BodyTimedOut):
        sock.recv(10)
    assert g.expired == "idle" and clock.now == pytest.approx(10.9)
    assert sock._sock.timeouts[-1] == 5.0


def test_a_trickle_under_the_idle_limit_is_ended_by_the_rate():
    clock = FakeClock()
    g = guard(clock)  # 100 B/s, 10 s of credit
    sock = _GuardedSocket(FakeSocket(clock, [(4, b"x")] * 10), g)
    with pytest.raises(BodyTimedOut):
        for _ in range(10):
            sock.recv(10)
    assert g.expired == "rate"
    assert clock.now == pytest.approx(10.02)  # 2 x 4 s, then the 2.02 s of credit left


def test_a_fast_start_cannot_bank_more_than_the_grace_period():
    clock = FakeClock()
    g = guard(clock)
    sock = _GuardedSocket(FakeSocket(clock, [(0.1, b"x" * 10 * MiB)] + [(4, b"x")] * 10), g)
    sock.recv(MiB)  # 10 MiB at once: ~29 hours at 100 B/s if averaged since the start
    assert g.credit == pytest.approx(10.1)  # capped at waited + grace
    with pytest.raises(BodyTimedOut):
        for _ in range(10):
            sock.recv(10)
    assert g.expired == "rate" and clock.now == pytest.approx(10.12)  # 0.1 + 2 x 4 + 2.02


def test_a_body_at_the_minimum_rate_goes_on():
    clock = FakeClock()
    g = guard(clock)
    sock = _GuardedSocket(FakeSocket(clock, [(1, b"x" * 100)] * 100), g)
    for _ in range(100):
        sock.recv(1000)
    assert g.expired is None and clock.now == pytest.approx(100)


def test_no_rate_check_when_the_minimum_rate_is_zero():
    clock = FakeClock()
    g = guard(clock, min_rate=0)
    sock = _GuardedSocket(FakeSocket(clock, [(4.9, b"x")] * 50), g)
    for _ in range(50):
        sock.recv(10)
    assert g.expired is None and g.budget() == (5.0, "idle")


class _Stream:
    def __init__(self, action):
        self.action = action

    def read(self, size):
        return self.action()


def test_the_body_turns_an_expired_limit_into_a_408():
    g = guard(FakeClock())

    def expire():
        g.expire("rate")

    with pytest.raises(errors.BodyTimeout) as caught:
        GuardedBody(_Stream(expire), g, per_recv=True).read(MiB)
    assert (caught.value.status, caught.value.code) == (408, "body_timeout")
    assert "slower than 100 bytes/s" in caught.value.message


def test_a_socket_timeout_wrapped_by_the_server_is_still_a_408():
    g = guard(FakeClock())

    def wrapped():
        try:
            raise TimeoutError("timed out")
        except TimeoutError as exc:
            raise OSError("reader failed") from exc

    with pytest.raises(errors.BodyTimeout) as caught:
        GuardedBody(_Stream(wrapped), g, per_recv=False).read(MiB)
    assert caught.value.message.startswith("No body bytes came for 5 s")


def test_other_read_failures_are_a_client_disconnect():
    def broken():
        raise ValueError("bad chunk")

    with pytest.raises(errors.ClientDisconnected) as caught:
        GuardedBody(_Stream(broken), guard(FakeClock()), per_recv=False).read(MiB)
    assert caught.value.message == "The body could not be read (ValueError)."


def test_between_reads_the_rate_is_checked_when_the_socket_is_not_reachable():
    clock = FakeClock()
    g = guard(clock)

    def slow_chunk():
        clock.now += 4
        return b"x"

    body = GuardedBody(_Stream(slow_chunk), g, per_recv=False)
    assert body.read(10) == b"x" and body.read(10) == b"x"
    with pytest.raises(errors.BodyTimeout):
        body.read(10)  # 12 s waited, 10.03 s of credit


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gevent", "gthread"])
def slow_stack(request, tmp_path_factory):
    with gateway_stack(
        tmp_path_factory.mktemp(f"slow-{request.param}"),
        mode="embedded",
        GATEWAY_WORKER_CLASS=request.param,
        GATEWAY_BODY_IDLE_TIMEOUT="2",
        GATEWAY_BODY_MIN_RATE="1024",
        GATEWAY_BODY_RATE_GRACE="3",
    ) as stack:
        yield stack


@pytest.fixture
def slow(slow_stack):
    slow_stack.reset()
    yield slow_stack
    print(slow_stack.logs())


def _gunicorn_port(stack) -> int:
    return int(stack.gateway_url.rsplit(":", 1)[1])


def _slow_upload(port, auth, *, trickle: bool):
    content = png_bytes(3 * MiB)
    body, content_type = form_body([("projectId", "p1")], [("file", "slow.png", content)])
    head = request_head(content_type=content_type, length=len(body), headers=auth)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body[: int(1.5 * MiB)])  # past one read: a temporary file exists
        if not trickle:
            return read_response(sock)
        sock.settimeout(0.5)  # one byte every 0.5 s: never idle for 2 s, far below 1 KiB/s
        sent = int(1.5 * MiB)
        for _ in range(120):
            try:
                return read_response(sock)
            except TimeoutError:
                sock.sendall(body[sent : sent + 1])
                sent += 1
        raise AssertionError("no answer to a trickling body")


@pytest.mark.parametrize("via", ["nginx", "gunicorn"])
@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickle"])
def test_a_slow_body_gets_408_and_leaves_nothing(slow, via, trickle):
    port = slow.nginx_port if via == "nginx" else _gunicorn_port(slow)
    reply = _slow_upload(port, slow.auth, trickle=trickle)
    assert reply.status == 408, reply.body
    error = json.loads(reply.body)
    assert error["success"] is False and error["error"]["code"] == "body_timeout"
    expected = "No body bytes came for 2 s" if not trickle else "The body came slower than 1024"
    assert error["error"]["message"].startswith(expected)
    assert poll(lambda: not any(leftovers(slow.svc).values()), timeout=10), leftovers(slow.svc)
    assert_nothing_left(slow.svc)


def test_a_body_that_pauses_within_the_limits_is_stored(slow):
    content = png_bytes(2 * MiB)
    body, content_type = form_body([("projectId", "p1")], [("file", "ok.png", content)])
    head = request_head(content_type=content_type, length=len(body), headers=slow.auth)
    with socket.create_connection(("127.0.0.1", slow.nginx_port), timeout=60) as sock:
        sock.sendall(head + body[:MiB])
        time.sleep(1)  # under the 2 s idle limit, within the 3 s of credit
        sock.sendall(body[MiB:])
        reply = read_response(sock)
    assert reply.status == 201, reply.body


def test_more_stalled_bodies_than_threads_are_all_ended(slow):
    """80 stalled bodies straight at gunicorn (gthread: 2 x 32 threads, so 16 wait in its queue):
    every one is answered 408, and /healthz answers afterwards."""
    body, content_type = form_body([("projectId", "p1")], [("file", "s.png", png_bytes(20_000))])
    head = request_head(content_type=content_type, length=MiB, headers=slow.auth)
    socks = []
    try:
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", _gunicorn_port(slow)), timeout=60)
            s.sendall(head + body[:500])
            socks.append(s)
        statuses = []
        for s in socks:
            statuses.append(read_response(s).status)
            s.close()
        assert statuses == [408] * 80
        assert requests.get(slow.gateway_url + "/healthz", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
    assert poll(lambda: not any(leftovers(slow.svc).values()), timeout=10), leftovers(slow.svc)


# -- slow clients do not starve the others (the default settings and worker class) -------------------
@pytest.fixture(scope="module")
def default_stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("slow-default"), mode="embedded") as stack:
        yield stack


SLOW_CLIENTS = 100


@pytest.mark.parametrize("via", ["nginx", "gunicorn"])
def test_a_hundred_slow_clients_do_not_starve_health_checks_or_uploads(default_stack, via):
    """100 authenticated uploads that sent their headers and a few bytes and then stall (well
    within the 30 s idle limit) hold their connections while /healthz, /readyz and a normal
    1 MiB upload are served; each probe must answer within 10 s (it took milliseconds here)."""
    stack = default_stack
    stack.reset()
    port = stack.nginx_port if via == "nginx" else _gunicorn_port(stack)
    base = f"http://127.0.0.1:{port}"
    body, content_type = form_body([("projectId", "p1")], [("file", "s.png", png_bytes(20_000))])
    head = request_head(content_type=content_type, length=MiB, headers=stack.auth)
    content = png_bytes(MiB)
    socks = []
    try:
        for _ in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(head + body[:500])
            socks.append(s)

        def probe(_):
            health = requests.get(base + "/healthz", timeout=10)
            ready = requests.get(base + "/readyz", timeout=10)
            upload = requests.post(
                base + "/api/upload?projectId=p1",
                files={"file": ("ok.png", content, "image/png")},
                headers=stack.auth,
                timeout=10,
            )
            return health.status_code, ready.status_code, upload.status_code

        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(probe, range(6)))
        assert results == [(200, 200, 201)] * 6
        # ...and the slow ones are still connected, not refused.
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in socks:
            s.close()
    # Their bodies ended short: every one rolled back, only the probes' uploads stay.
    assert poll(lambda: leftovers(stack.svc)["pending_uploads"] == [], timeout=30)
    assert len(leftovers(stack.svc)["records"]) == 6


# -- the guard's edges, exactly (fake clock, recording socket) --------------------------------------
class RecordingSocket:
    """A socket stand-in that records what the guard asks of it."""

    def __init__(self, clock: FakeClock, delay: float = 0.0, data: bytes | None = b"d") -> None:
        self.clock, self.delay, self.data = clock, delay, data
        self.timeouts: list[float | None] = []
        self.calls: list[tuple] = []
        self.family = "recording"

    def settimeout(self, value):
        self.timeouts.append(value)

    def recv(self, size, *flags):
        self.calls.append((size, *flags))
        self.clock.now += self.delay
        if self.data is None:
            raise TimeoutError("timed out")
        return self.data


def test_the_idle_limit_decides_when_it_is_no_longer_than_the_credit():
    g = guard(FakeClock(), idle=5.0, min_rate=100, grace=5.0)
    assert g.budget() == (5.0, "idle")
    g.waited = 0.5
    assert g.budget() == (4.5, "rate")
    assert guard(FakeClock(), idle=5.0, min_rate=0, grace=1.0).budget() == (5.0, "idle")


def test_recv_passes_size_and_flags_and_counts_what_it_waited():
    clock = FakeClock()
    g = guard(clock)
    raw = RecordingSocket(clock, delay=1.5, data=b"abc")
    sock = _GuardedSocket(raw, g)
    assert sock.recv(10, 2) == b"abc"
    assert raw.calls == [(10, 2)] and raw.timeouts == [5.0]
    assert (g.waited, g.received) == (1.5, 3)
    assert sock.family == "recording"  # everything else is the socket's own


def test_a_timed_out_recv_counts_the_wait_but_no_bytes():
    clock = FakeClock()
    clock.now = 100.0
    g = guard(clock)
    sock = _GuardedSocket(RecordingSocket(clock, delay=5.0, data=None), g)
    with pytest.raises(BodyTimedOut) as caught:
        sock.recv(10)
    assert caught.value.args == ("idle",) and g.expired == "idle"
    assert (g.waited, g.received) == (5.0, 0)
    assert g.error().message == "No body bytes came for 5 s; nothing was kept."


def test_recv_with_no_budget_left_expires_without_waiting():
    clock = FakeClock()
    g = guard(clock, idle=5.0, min_rate=100, grace=10.0)
    g.waited = 10.0  # exactly the credit: nothing left
    raw = RecordingSocket(clock)
    with pytest.raises(BodyTimedOut) as caught:
        _GuardedSocket(raw, g).recv(10)
    assert caught.value.args == ("rate",) and g.expired == "rate"
    assert raw.calls == [] and raw.timeouts == []


def test_recv_with_a_fraction_of_a_second_left_still_waits_that_long():
    clock = FakeClock()
    g = guard(clock, idle=5.0, min_rate=100, grace=10.0)
    g.waited = 9.5
    raw = RecordingSocket(clock, delay=0.25, data=b"x" * 100)
    assert _GuardedSocket(raw, g).recv(100) == b"x" * 100
    assert raw.timeouts == [0.5] and g.expired is None


def test_the_rate_message_says_how_slow_it_was():
    clock = FakeClock()
    g = guard(clock, min_rate=100, grace=10.0)
    g.account(12.4, 30)
    with pytest.raises(BodyTimedOut) as caught:
        g.check_rate()
    assert caught.value.args == ("rate",)
    assert g.error().message == (
        "The body came slower than 100 bytes/s (30 bytes in 12 s of waiting); nothing was kept."
    )
    assert (g.error().status, g.error().code) == (408, "body_timeout")


def test_the_rate_is_checked_only_past_the_credit():
    g = guard(FakeClock(), min_rate=100, grace=10.0)
    g.account(10.0, 0)  # waited exactly the credit
    g.check_rate()
    assert g.expired is None
    g.account(0.01, 0)
    with pytest.raises(BodyTimedOut):
        g.check_rate()


def test_credit_grows_with_bytes_and_is_capped():
    g = guard(FakeClock(), min_rate=100, grace=10.0)
    g.account(1.0, 50)
    assert g.credit == pytest.approx(10.5)
    g.account(0.0, 10_000)
    assert g.credit == pytest.approx(11.0)  # waited 1 + grace 10
    no_rate = guard(FakeClock(), min_rate=0, grace=10.0)
    no_rate.account(100.0, 1)
    assert no_rate.credit == 10.0
    no_rate.check_rate()


def _chain(depth: int, *, via: str = "cause") -> Exception:
    """A TimeoutError wrapped ``depth - 1`` times."""
    exc: Exception = TimeoutError("timed out")
    for i in range(depth - 1):
        outer = OSError(f"wrapper {i}")
        setattr(outer, "__cause__" if via == "cause" else "__context__", exc)
        exc = outer
    return exc


@pytest.mark.parametrize(
    "depth, via, timeout",
    [
        (1, "cause", True),
        (5, "cause", True),  # four wrappers: still found
        (5, "context", True),
        (6, "cause", False),  # five wrappers: too deep, a disconnect
        (6, "context", False),
    ],
)
def test_a_timeout_is_found_through_at_most_four_wrappers(depth, via, timeout):
    error = _chain(depth, via=via)

    def read():
        raise error

    g = guard(FakeClock())
    expected = errors.BodyTimeout if timeout else errors.ClientDisconnected
    with pytest.raises(expected):
        GuardedBody(_Stream(read), g, per_recv=False).read(10)
    assert g.expired == ("idle" if timeout else None)


def test_a_body_timed_out_error_is_a_timeout_too():
    g = guard(FakeClock())

    def read():
        try:
            raise BodyTimedOut("rate")
        except BodyTimedOut as exc:
            raise ValueError("wrapped") from exc

    with pytest.raises(errors.BodyTimeout):
        GuardedBody(_Stream(read), g, per_recv=False).read(10)


def test_an_already_expired_guard_answers_with_its_own_reason():
    g = guard(FakeClock())
    g.expired = "rate"
    g.account(20.0, 5)

    def read():
        raise OSError("socket closed by the guard")

    with pytest.raises(errors.BodyTimeout) as caught:
        GuardedBody(_Stream(read), g, per_recv=True).read(10)
    assert caught.value.message.startswith("The body came slower than 100 bytes/s")


def test_gateway_errors_from_the_stream_pass_unchanged():
    def read():
        raise errors.TooLarge("from the stream")

    with pytest.raises(errors.TooLarge) as caught:
        GuardedBody(_Stream(read), guard(FakeClock()), per_recv=False).read(10)
    assert caught.value.message == "from the stream"


def test_per_recv_reads_leave_the_accounting_to_the_socket():
    clock = FakeClock()
    g = guard(clock)

    def slow():
        clock.now += 50
        return b"x"

    body = GuardedBody(_Stream(slow), g, per_recv=True)
    assert body.read(10) == b"x" and body.read(10) == b"x"
    assert (g.waited, g.received, g.expired) == (0.0, 0, None)


def test_between_reads_the_wait_and_the_bytes_are_counted():
    clock = FakeClock()
    g = guard(clock)

    def chunk():
        clock.now += 2
        return b"x" * 300

    body = GuardedBody(_Stream(chunk), g, per_recv=False)
    assert body.read(300) == b"x" * 300
    assert (g.waited, g.received) == (2.0, 300)


# -- guarded_body: where the guard goes under gunicorn, and what is restored ------------------------
class _Unreader:
    def __init__(self, sock) -> None:
        self.sock = sock


class _Reader:
    def __init__(self, unreader=None, req=None) -> None:
        if unreader is not None:
            self.unreader = unreader
        if req is not None:
            self.req = req


class _Req:
    def __init__(self, unreader) -> None:
        self.unreader = unreader


class _Input:
    def __init__(self, reader) -> None:
        self.reader = reader


LIMITS = BodyLimits(idle=7.0, min_rate=100, grace=10.0)


@pytest.mark.parametrize("shape", ["reader", "req"])
def test_under_gunicorn_the_guard_wraps_the_readers_socket_and_restores_it(shape):
    from gateway.http.bodies import guarded_body

    left, right = socket.socketpair()
    with left, right:
        left.settimeout(3.0)
        unreader = _Unreader(left)
        reader = _Reader(unreader=unreader) if shape == "reader" else _Reader(req=_Req(unreader))
        environ = {"gunicorn.socket": left, "wsgi.input": _Input(reader)}
        with guarded_body(environ, _Input(reader), LIMITS) as body:  # type: ignore[arg-type]
            assert isinstance(unreader.sock, _GuardedSocket)
            assert unreader.sock._sock is left and unreader.sock._guard is body.guard
            assert body._per_recv is True and body.guard.limits == LIMITS
            right.sendall(b"hello")
            assert unreader.sock.recv(5) == b"hello"
            assert body.guard.received == 5
        assert unreader.sock is left
        assert left.gettimeout() == 3.0


def test_under_gunicorn_without_its_reader_the_idle_limit_is_the_socket_timeout():
    from gateway.http.bodies import guarded_body

    left, right = socket.socketpair()
    with left, right:
        left.settimeout(None)
        environ = {"gunicorn.socket": left, "wsgi.input": object()}
        with guarded_body(environ, _Input(None), LIMITS) as body:  # type: ignore[arg-type]
            assert body._per_recv is False
            assert left.gettimeout() == 7.0
        assert left.gettimeout() is None


def test_a_reader_on_another_socket_is_not_wrapped():
    from gateway.http.bodies import guarded_body

    left, right = socket.socketpair()
    with left, right:
        unreader = _Unreader(right)
        environ = {"gunicorn.socket": left, "wsgi.input": _Input(_Reader(unreader=unreader))}
        with guarded_body(environ, _Input(None), LIMITS) as body:  # type: ignore[arg-type]
            assert body._per_recv is False and unreader.sock is right
            assert left.gettimeout() == 7.0


def test_without_gunicorn_nothing_is_wrapped():
    from gateway.http.bodies import guarded_body

    stream = _Stream(lambda: b"")
    with guarded_body({"wsgi.input": stream}, stream, LIMITS) as body:  # type: ignore[arg-type]
        assert body._per_recv is False and body.read(10) == b""


def test_a_body_read_through_the_servers_reader_is_counted_in_the_budget():
    """A chunked body (gunicorn's own reader fills each read's buffer as the bytes come), or
    any body not received directly: each read's size is taken from the memory budget before
    the read, at most the reads' share, and given back at the next read and at the end."""
    import io

    from gateway.http.bodies import guarded_body
    from gateway.storage.staging import MemoryBudget

    budget = MemoryBudget(1 << 20)  # the reads' share: 256 KiB
    data = os.urandom(600 * 1024)
    stream = io.BytesIO(data)
    with guarded_body({"wsgi.input": stream}, stream, LIMITS, budget) as body:  # type: ignore[arg-type]
        first = body.read(100 * 1024)
        assert len(first) == budget.held == 100 * 1024
        second = body.read(1 << 20)
        assert len(second) == budget.held == budget.read_cap == 256 * 1024
    assert budget.held == 0
    assert first + second == data[: len(first) + len(second)]


# -- Content-Length bodies under gunicorn: received straight into what each read returns ----------
def gunicorn_body(sock, length: int, read_ahead: bytes = b""):
    """gunicorn's own body objects for a request with a Content-Length on ``sock``, holding
    ``read_ahead`` as if it had arrived with the headers."""
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    unreader = SocketUnreader(sock)
    if read_ahead:
        unreader.unread(read_ahead)
    return Body(LengthReader(unreader, length)), unreader


def test_a_content_length_body_is_received_into_the_buffers_it_returns():
    from gateway.http.bodies import _LengthBody, guarded_body

    content = os.urandom(300_000)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(3.0)
        server_body, unreader = gunicorn_body(left, len(content), read_ahead=content[:1000])
        sender = threading.Thread(target=right.sendall, args=(content[1000:] + b"PIPELINED",))
        sender.start()  # more than a socket buffer holds
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        with guarded_body(environ, server_body, LIMITS) as body:
            assert isinstance(body._stream, _LengthBody) and unreader.sock is left
            assert body.read(600) == content[:600]  # what came with the headers, first
            assert body.read(10_000) == content[600:1000]
            received = body.read(200_000)
            assert type(received) is bytearray and received == content[1000:201_000]
            assert server_body.reader.length == len(content) - 201_000
            assert body.guard.received == 200_000
        assert left.gettimeout() == 3.0
        # Whatever reads the body afterwards (the lingering drain) gets exactly the rest.
        assert server_body.read(1_000_000) == content[201_000:]
        assert server_body.read(10) == b""
        sender.join()
        assert unreader.read() == b"PIPELINED"


def test_read_ahead_past_the_body_goes_back_to_gunicorn():
    from gateway.http.bodies import guarded_body

    left, right = socket.socketpair()
    with left, right:
        server_body, unreader = gunicorn_body(left, 5, read_ahead=b"hello" + b"GET / HTTP/1.1")
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        with guarded_body(environ, server_body, LIMITS) as body:
            assert body.read(100) == b"hello"
            assert body.read(100) == b""
        assert unreader.read() == b"GET / HTTP/1.1"


def test_a_body_cut_short_ends_its_reads_and_one_that_stalls_is_a_408():
    from gateway.http.bodies import guarded_body

    limits = BodyLimits(idle=0.2, min_rate=0, grace=10.0)
    left, right = socket.socketpair()
    with left:
        server_body, _ = gunicorn_body(left, 1000)
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        right.sendall(b"x" * 300)
        with guarded_body(environ, server_body, limits) as body:
            assert body.read(200) == b"x" * 200
            right.close()  # the client went away
            assert body.read(800) == b"x" * 100
            assert body.read(800) == b""  # the protocols then count bytes against the length
    left, right = socket.socketpair()
    with left, right:
        server_body, _ = gunicorn_body(left, 1000)
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        right.sendall(b"x" * 100)
        with guarded_body(environ, server_body, limits) as body:
            assert body.read(800) == b"x" * 100  # what has arrived, at once
            with pytest.raises(errors.BodyTimeout) as stalled:
                body.read(800)
            assert stalled.value.status == 408 and body.guard.received == 100


def test_gunicorns_reader_is_kept_when_the_body_was_wrapped_or_already_read_from():
    from gateway.http.bodies import guarded_body

    left, right = socket.socketpair()
    with left, right:
        server_body, unreader = gunicorn_body(left, 10)
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        with guarded_body(environ, _Stream(lambda: b""), LIMITS) as body:  # type: ignore[arg-type]
            assert isinstance(unreader.sock, _GuardedSocket) and body._per_recv is True
        right.sendall(b"0123456789")
        assert server_body.read(3) == b"012"  # gunicorn's Body now buffers the rest
        with guarded_body(environ, server_body, LIMITS) as body:
            assert isinstance(unreader.sock, _GuardedSocket)
            assert body.read(100) == b"3456789"
        assert unreader.sock is left


# -- the upload routes' body (gateway/http/api: upload_body) ----------------------------------------------
@pytest.mark.parametrize("protocol", ["form", "tus"])
def test_an_upload_routes_body_is_guarded_and_counted_in_flight_until_it_ends(tmp_path, protocol):
    from gateway import create_app, metrics
    from gateway.http.api import upload_body

    from conftest import make_settings

    settings = make_settings(tmp_path, body_idle_timeout=7.0, body_min_rate=10)
    app = create_app(settings)
    gauge = metrics.UPLOADS_IN_FLIGHT.labels(protocol)
    before = gauge._value.get()
    with app.test_request_context("/api/upload", method="POST", data=b"abc"):
        with pytest.raises(errors.ClientDisconnected), upload_body(protocol) as body:
            assert gauge._value.get() == before + 1
            assert isinstance(body, GuardedBody)
            assert body.guard.limits == BodyLimits.of(settings)
            assert body.guard.limits.idle == 7.0 and body.guard.limits.min_rate == 10
            assert body.read(10) == b"abc"
            raise errors.ClientDisconnected()
        assert gauge._value.get() == before


def test_a_read_takes_what_has_arrived_and_holds_exactly_that_in_the_budget():
    """Reads sized to what has arrived (gateway/http/bodies.py ``_LengthBody``): a backlog of
    100 KiB comes back as one read of exactly that, without waiting for the 1 MiB asked; a
    backlog larger than asked gives what was asked; a trickle of 100 bytes comes back as those
    100 bytes at once. Each read's bytes are held in the budget until the next."""
    from gateway.http.bodies import guarded_body
    from gateway.storage.staging import MemoryBudget

    budget = MemoryBudget(64 * 1024 * 1024)
    limits = BodyLimits(idle=0.5, min_rate=0, grace=10.0)
    content = os.urandom(200 * 1024)
    left, right = socket.socketpair()
    with left, right:
        server_body, _ = gunicorn_body(left, len(content))
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        right.sendall(content[: 100 * 1024])
        with guarded_body(environ, server_body, limits, budget) as body:
            assert body.read(1024 * 1024) == content[: 100 * 1024]  # no wait for the rest
            assert budget.held == 100 * 1024
            right.sendall(content[100 * 1024 : 190 * 1024])
            poll(lambda: _held_by(left) == 90 * 1024)
            assert body.read(50 * 1024) == content[100 * 1024 : 150 * 1024]  # as asked
            assert budget.held == 50 * 1024
            assert body.read(1024 * 1024) == content[150 * 1024 : 190 * 1024]
            right.sendall(content[190 * 1024 : 190 * 1024 + 100])  # then a trickle
            assert body.read(1024 * 1024) == content[190 * 1024 : 190 * 1024 + 100]
            assert budget.held == 100 and body.guard.received == 190 * 1024 + 100
            with pytest.raises(errors.BodyTimeout):
                body.read(1024 * 1024)  # nothing more came
        assert budget.held == 0  # given back when the body ends


def _held_by(sock: socket.socket) -> int:
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def test_a_slow_body_holds_no_buffer_and_none_of_the_budget_between_its_reads():
    """A client that sends a few bytes at a time: each read returns as soon as bytes are there,
    and while the body waits for the next ones it holds nothing (gunicorn's heap held a 64 KiB
    buffer per slow upload when a read waited to fill it; docs/benchmarks.md)."""
    from gateway.http.bodies import _LengthBody, guarded_body
    from gateway.storage.staging import MemoryBudget

    budget = MemoryBudget(64 * 1024 * 1024)
    limits = BodyLimits(idle=10.0, min_rate=0, grace=10.0)
    content = os.urandom(3 * 4096)
    left, right = socket.socketpair()
    with left, right:
        server_body, _ = gunicorn_body(left, len(content))
        environ = {"gunicorn.socket": left, "wsgi.input": server_body}
        with guarded_body(environ, server_body, limits, budget) as body:
            direct = body._stream
            assert isinstance(direct, _LengthBody)
            got: list[bytes | bytearray] = []
            for start in range(0, len(content), 4096):
                reader = threading.Thread(target=lambda: got.append(body.read(1024 * 1024)))
                reader.start()
                poll(lambda: budget.held == 0 and body.guard.received == start)
                assert reader.is_alive() and direct.held == 0  # waiting, holding nothing
                right.sendall(content[start : start + 1024])
                reader.join(5)
                assert not reader.is_alive()  # what came, at once: not waiting to fill a buffer
                assert got[-1] == content[start : start + 1024]
                assert budget.held == direct.held == 1024  # exactly the bytes handed out
                right.sendall(content[start + 1024 : start + 4096])
                poll(lambda: _held_by(left) == 3072)
                got.append(body.read(1024 * 1024))
                assert got[-1] == content[start + 1024 : start + 4096]
                assert budget.held == direct.held == 3072
        assert budget.held == 0
    assert b"".join(got) == content


def test_a_fast_clients_read_of_a_little_waits_briefly_for_more_holding_nothing(monkeypatch):
    """Over TCP, when less than 64 KiB has arrived for a body's first read, or from a client whose
    pace so far would bring the rest within ``GATHER_WAIT``, the read first waits (``SO_RCVLOWAT``) for 64 KiB, holding
    no buffer and none of the budget: a fast client's bytes still come in 64 KiB reads. When no
    more comes, it takes what there is; the socket's low-water mark is put back. A slow
    client's read (256 KiB in 1,000 s so far) takes what came without waiting."""
    from gateway.http.bodies import _LengthBody, guarded_body
    from gateway.storage.staging import MemoryBudget

    def lowat(sock: socket.socket) -> int:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)

    content = os.urandom(320 * 1024)  # each body below reads less: its reads ask 64 KiB
    limits = BodyLimits(idle=60.0, min_rate=0, grace=10.0)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as right:
        left, _ = listener.accept()
        with left:
            budget = MemoryBudget(64 * 1024 * 1024)
            server_body, _ = gunicorn_body(left, len(content))
            environ = {"gunicorn.socket": left, "wsgi.input": server_body}
            monkeypatch.setattr(_LengthBody, "GATHER_WAIT", 30.0)
            got: list[bytes | bytearray] = []
            with guarded_body(environ, server_body, limits, budget) as body:
                # the body's first read: its pace is not known yet, so it waits as a fast one
                right.sendall(content[:1024])
                reader = threading.Thread(target=lambda: got.append(body.read(1024 * 1024)))
                reader.start()
                poll(lambda: lowat(left) == 64 * 1024)  # gathering
                assert budget.held == 0 and reader.is_alive()
                right.sendall(content[1024 : 64 * 1024])
                reader.join(10)
                assert got == [content[: 64 * 1024]] and lowat(left) == 1
                assert budget.held == 64 * 1024
            with guarded_body(environ, server_body, limits, budget) as body:
                body.guard.account(1000.0, 256 * 1024)  # 256 KiB in 1,000 s so far: a slow client
                right.sendall(content[64 * 1024 : 64 * 1024 + 100])
                reader = threading.Thread(target=lambda: got.append(body.read(1024 * 1024)))
                reader.daemon = True
                reader.start()
                reader.join(10)  # not the 30 s a wait would take
                assert got[-1] == content[64 * 1024 : 64 * 1024 + 100] and lowat(left) == 1
            monkeypatch.setattr(_LengthBody, "GATHER_WAIT", 0.05)
            with guarded_body(environ, server_body, limits, budget) as body:
                body.guard.account(0.01, 1 << 20)
                right.sendall(content[64 * 1024 + 100 : 64 * 1024 + 200])
                assert body.read(1024 * 1024) == content[64 * 1024 + 100 : 64 * 1024 + 200]
                assert lowat(left) == 1 and budget.held == 100
