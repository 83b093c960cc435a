"""Slow bodies: the guard's idle limit and minimum rate (unit, on a fake clock), and end to end
through real gunicorn (gevent, the default, and gthread), directly and through nginx: a slow body
is answered 408 body_timeout and leaves nothing, and slow clients do not starve the others."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway import errors
from gateway.bodies import BodyGuard, BodyLimits, BodyTimedOut, GuardedBody, _GuardedSocket

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
