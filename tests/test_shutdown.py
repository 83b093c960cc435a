"""A graceful stop (SIGTERM to the gunicorn master) during a 200 MiB upload: readiness is refused
first, and the client gets a complete answer either way: its upload finished within the grace
(201, stored whole) or ended after it (503 shutting_down, nothing left anywhere)."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from gateway.errors import ShuttingDown
from gateway.http import shutdown
from gateway.http.bodies import BodyGuard, BodyLimits, BodyTimedOut

from e2e_harness import gateway_stack, poll
from support import leftovers

MiB = 1024 * 1024
SIZE = 200 * MiB
BOUNDARY = "shutdown-test-boundary-5e1f"
BLOCK = bytes(range(256)) * 4096  # 1 MiB, never contains the boundary
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
FIRST = PNG + BLOCK[len(PNG) :]  # the file starts as a PNG (the allow-list sniffs it)


@dataclass
class Upload:
    """One streaming form upload of SIZE bytes to gunicorn, paced by ``mib_per_s`` (0: flat out)."""

    port: int
    token: str
    mib_per_s: float
    sent: int = 0
    status: int = 0
    headers: dict = field(default_factory=dict)
    body: dict = field(default_factory=dict)
    send_error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Upload:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.putrequest("POST", "/api/upload?projectId=p1")
            conn.putheader("Authorization", f"Bearer {self.token}")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
            conn.putheader("Content-Length", str(len(head) + SIZE + len(tail)))
            conn.endheaders(head)
            started = time.monotonic()
            try:
                while self.sent < SIZE:
                    conn.send(BLOCK if self.sent else FIRST)
                    self.sent += len(BLOCK)
                    if self.mib_per_s:
                        ahead = self.sent / MiB / self.mib_per_s - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                conn.send(tail)
            except OSError as exc:  # the gateway answered early and closed: read its answer
                self.send_error = type(exc).__name__
            response = conn.getresponse()
            self.status = response.status
            self.headers = dict(response.getheaders())
            self.body = json.loads(response.read())
        finally:
            conn.close()
            self.done.set()


def expected_sha256() -> str:
    digest = hashlib.sha256(FIRST)
    for _ in range(SIZE // MiB - 1):
        digest.update(BLOCK)
    return digest.hexdigest()


def sigterm_mid_upload(stack, upload: Upload) -> tuple[int, dict]:
    """Once 32 MiB are in, SIGTERM the master; return /readyz's answer during the delay."""
    assert poll(lambda: upload.sent >= 32 * MiB, timeout=60)
    stack.procs["gunicorn"].send_signal(signal.SIGTERM)
    answers = []

    def not_ready() -> bool:  # the master takes the signal from its loop, a moment later
        answers.append(requests.get(stack.gateway_url + "/readyz", timeout=10))
        return answers[-1].status_code == 503

    poll(not_ready, timeout=1.5, interval=0.05)  # within the 2 s the listeners stay open
    return answers[-1].status_code, answers[-1].json()


@pytest.fixture
def stopping_stack(tmp_path, moto_url, request):
    grace = request.param
    with gateway_stack(
        tmp_path,
        mode="s3",
        moto_url=moto_url,
        GATEWAY_SHUTDOWN_DELAY="2",
        GATEWAY_SHUTDOWN_UPLOAD_GRACE=str(grace),
        GATEWAY_GRACEFUL_TIMEOUT=str(grace + 20),
        GATEWAY_MAX_UPLOAD_BYTES=str(SIZE + MiB),
    ) as stack:
        yield stack


@pytest.mark.parametrize("stopping_stack", [3], indirect=True)
def test_an_upload_still_arriving_after_the_grace_ends_with_503_and_leaves_nothing(
    stopping_stack,
):
    stack = stopping_stack
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    upload = Upload(port, stack.token, mib_per_s=8).start()  # 25 s in all: past the grace
    status, ready = sigterm_mid_upload(stack, upload)
    assert status == 503
    assert ready["ready"] is False and ready["checks"]["shutdown"].startswith("stopping")
    assert upload.done.wait(60)
    assert upload.status == 503, upload.body
    assert upload.body["error"]["code"] == "shutting_down"
    assert upload.headers["Retry-After"] == "5"
    assert upload.sent < SIZE  # it was ended, not completed
    assert stack.procs["gunicorn"].wait(60) == 0  # the master stopped on its own
    assert leftovers(stack.svc) == {"objects": [], "pending_uploads": [], "records": []}
    assert stack.svc.journal.list_keys() == []  # the rollback deleted what it started
    assert stack.svc.queue.stats().visible == 0


@pytest.mark.parametrize("stopping_stack", [60], indirect=True)
def test_an_upload_that_finishes_within_the_grace_is_stored_whole(stopping_stack):
    stack = stopping_stack
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    upload = Upload(port, stack.token, mib_per_s=40).start()  # about 5 s: within the grace
    status, _ = sigterm_mid_upload(stack, upload)
    assert status == 503
    assert upload.done.wait(120)
    assert upload.status == 201, upload.body
    assert upload.body["size"] == SIZE and upload.body["sha256"] == expected_sha256()
    assert stack.procs["gunicorn"].wait(60) == 0
    left = leftovers(stack.svc)
    assert left["pending_uploads"] == [] and left["records"] == [upload.body["mediaId"]]
    assert len(left["objects"]) == 1


# -- the body reader's part, in one process ---------------------------------------------------------
@pytest.fixture
def stop_marked():
    shutdown.reset()
    yield
    shutdown.reset()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_without_a_stop_the_budget_is_the_body_limits_alone(stop_marked):
    guard = BodyGuard(BodyLimits(idle=30, min_rate=0, grace=30, shutdown_grace=5), Clock())
    assert guard.budget() == (30, "idle")
    guard.check_shutdown()  # no stop: nothing raised


def test_a_stop_caps_each_wait_at_the_upload_grace_and_then_ends_the_body(stop_marked):
    clock = Clock()
    guard = BodyGuard(BodyLimits(idle=30, min_rate=0, grace=30, shutdown_grace=5), clock)
    shutdown.begin(now=clock.now)
    assert shutdown.stopping()
    assert guard.budget() == (5, "shutdown")
    clock.now += 4.5
    assert guard.budget() == (pytest.approx(0.5), "shutdown")
    guard.check_shutdown()  # 0.5 s left: still reading
    clock.now += 0.5
    with pytest.raises(BodyTimedOut):
        guard.check_shutdown()
    assert guard.expired == "shutdown"
    assert isinstance(guard.error(), ShuttingDown)


def test_a_stop_far_off_leaves_the_idle_limit_in_charge(stop_marked):
    clock = Clock()
    guard = BodyGuard(BodyLimits(idle=30, min_rate=0, grace=30, shutdown_grace=60), clock)
    shutdown.begin(now=clock.now)
    assert guard.budget() == (30, "idle")
    clock.now += 31
    assert guard.budget() == (29, "shutdown")


def test_the_first_mark_of_a_stop_is_kept(stop_marked):
    shutdown.begin(now=50.0)
    shutdown.begin(now=80.0)
    assert shutdown.uploads_end_at(10) == 60.0


def test_a_stop_marked_without_a_time_starts_now(stop_marked):
    import time as clock

    before = clock.monotonic()
    shutdown.begin()
    after = clock.monotonic()
    end = shutdown.uploads_end_at(10)
    assert end is not None and before + 10 <= end <= after + 10


def test_a_stop_exactly_as_far_off_as_the_idle_limit_leaves_idle_in_charge(stop_marked):
    clock = Clock()
    guard = BodyGuard(BodyLimits(idle=30, min_rate=0, grace=30, shutdown_grace=30), clock)
    shutdown.begin(now=clock.now)
    assert guard.budget() == (30, "idle")
