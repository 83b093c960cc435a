"""Slow uploads' parts staged on disk, the memory budget and its back-pressure
(gateway/storage/staging.py, gateway/http/bodies.py).

A staged part is removed on every exit: sent (success), abort, client disconnect, a full disk
(507, nothing half-stored) and a worker killed with SIGKILL (the sweeper). With a tiny budget,
concurrent uploads all finish and none is refused. No timings: a fake clock decides what is
slow in-process; through gunicorn, a rate no client reaches makes every part slow.
"""

from __future__ import annotations

import errno
import http.client
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway import errors
from gateway.storage.buffers import PartBuffers
from gateway.storage.integrity import sums
from gateway.storage.staging import (
    PROBE_BYTES,
    BytesPart,
    FileBody,
    MemoryBudget,
    MemoryPart,
    OffLoop,
    PartFiller,
    PartSpace,
    StagedPart,
    Staging,
    owner_alive,
    process_tag,
)

from e2e_harness import gateway_stack, poll
from support import MiB, assert_nothing_left, assert_stored, free_port, png_bytes

KiB = 1024
PART = 5 * MiB


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def space_for(tmp_path: Path, *, clock: Clock, budget: int = 1 << 30, rate: int = 4 * MiB):
    staging = Staging(tmp_path / "staging", 1 << 40)
    return PartSpace(MemoryBudget(budget), staging, fast_rate=rate, clock=clock), staging


# -- the memory budget -----------------------------------------------------------------------------
def test_parts_leave_the_read_share_free_and_never_wait():
    budget = MemoryBudget(100, read_share=25)
    assert budget.try_part(75)
    assert not budget.try_part(1)  # parts may hold limit - read_share, no more
    assert budget.reserve_read(25) == 25  # reads still have their share
    budget.release(25)
    budget.release(75, part=True)
    assert budget.held == 0 and budget.parts == 0 and budget.peak == 100


def test_a_read_waits_for_room_and_goes_on_when_another_gives_back():
    budget = MemoryBudget(100, read_share=60)
    assert budget.reserve_read(1000) == 60  # a read takes at most the read share
    granted: list[int] = []
    waiter = threading.Thread(target=lambda: granted.append(budget.reserve_read(50)))
    waiter.start()
    poll(lambda: budget.waits == 1)
    assert granted == [] and waiter.is_alive()  # back-pressure: waiting, not refused
    budget.release(60)
    waiter.join(10)
    assert granted == [50] and budget.held == 50


def test_a_read_that_waits_past_its_deadline_takes_what_fits():
    budget = MemoryBudget(100, read_share=100)
    budget.reserve_read(90)
    assert budget.reserve_read(50, timeout=0.01) == 10
    assert budget.held == 100


# -- memory or disk, per part ----------------------------------------------------------------------
def test_an_upload_whose_first_bytes_come_fast_fills_its_parts_in_memory(tmp_path):
    clock = Clock()
    space, staging = space_for(tmp_path, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    data = os.urandom(PART + 100 * KiB)
    full = filler.write(data[:PROBE_BYTES])
    clock.now += 0.01  # the probe (256 KiB) in 10 ms: 25 MiB/s
    full += filler.write(data[PROBE_BYTES:])
    assert [type(p) for p in full] == [MemoryPart] and isinstance(filler.current, MemoryPart)
    assert full[0].read() == data[:PART] and filler.take().read() == data[PART:]
    assert list(staging.files()) == []


def test_an_upload_whose_first_bytes_come_slowly_is_staged_and_its_file_goes_when_sent(tmp_path):
    clock = Clock()
    space, staging = space_for(tmp_path, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    data = os.urandom(PART + 10 * KiB)
    full: list = []
    for start in range(0, len(data), 64 * KiB):  # 64 KiB a second
        full += filler.write(data[start : start + 64 * KiB])
        clock.now += 1
    assert [type(p) for p in full] == [StagedPart] and isinstance(filler.current, StagedPart)
    assert space.budget.held == 0  # nothing of it in memory
    assert len(list(staging.files())) == 2
    assert full[0].read() == data[:PART]
    full[0].release()
    assert len(list(staging.files())) == 1  # the part sent: its file gone
    filler.discard()
    assert list(staging.files()) == [] and staging.bytes == 0


def test_the_probe_is_decided_by_its_window_and_a_late_write_is_never_held_in_it(tmp_path):
    """The window is PROBE_BYTES at the fast rate (256 KiB at 4 MiB/s: 62.5 ms). Bytes within
    it wait in the probe; the first write after it finds the upload slow before holding any of
    its bytes: the probe's bytes go to a staged file, the write's go after them, and the probe
    and its place in the budget are given back. (The probe used to take the late write's bytes
    first, up to 256 KiB copied for an upload already known to be slow.)"""
    import tracemalloc

    clock = Clock()
    staging = Staging(tmp_path / "staging", 1 << 40, blocking=OffLoop(native=False))
    space = PartSpace(MemoryBudget(1 << 30), staging, fast_rate=4 * MiB, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    data = os.urandom(16 * KiB + 200 * KiB)
    filler.write(data[: 4 * KiB])
    clock.now = PROBE_BYTES / (4 * MiB)  # the window's last instant: still probing
    filler.write(data[4 * KiB : 16 * KiB])
    assert filler.current is None and filler.filled == 16 * KiB
    assert space.budget.parts == PROBE_BYTES and list(staging.files()) == []
    clock.now += 0.001  # past the window
    late = memoryview(data)[16 * KiB :]
    tracemalloc.start()
    try:
        filler.write(late)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * KiB  # the late 200 KiB written to the file as they are, never copied
    assert isinstance(filler.current, StagedPart) and filler.current.read() == data
    assert filler._probe is None and space.budget.parts == space.budget.held == 0
    filler.discard()
    assert list(staging.files()) == []


def test_a_probe_filled_within_its_window_is_fast(tmp_path):
    clock = Clock()
    space, staging = space_for(tmp_path, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    data = os.urandom(PROBE_BYTES + KiB)
    filler.write(data[: PROBE_BYTES // 2])
    clock.now = PROBE_BYTES / (4 * MiB)
    filler.write(data[PROBE_BYTES // 2 :])
    assert isinstance(filler.current, MemoryPart) and filler.current.read() == data
    assert space.budget.parts == PART and list(staging.files()) == []
    filler.discard()
    assert space.budget.parts == 0


def test_a_part_in_memory_that_stalls_moves_to_disk(tmp_path):
    clock = Clock()
    space, staging = space_for(tmp_path, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    data = os.urandom(3 * PROBE_BYTES)
    filler.write(data[:PROBE_BYTES])
    filler.write(data[PROBE_BYTES : 2 * PROBE_BYTES])  # fast: in memory
    assert isinstance(filler.current, MemoryPart) and space.budget.parts == PART
    clock.now += 60  # then a minute of nothing
    filler.write(data[2 * PROBE_BYTES :])
    assert isinstance(filler.current, StagedPart) and space.budget.parts == 0
    assert filler.current.read() == data
    filler.discard()
    assert list(staging.files()) == []


def test_a_part_that_does_not_fit_the_budget_is_staged_however_fast(tmp_path):
    clock = Clock()
    space, _ = space_for(tmp_path, clock=clock, budget=PART)  # parts may hold 3/4 of it
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    filler.write(b"x" * (PROBE_BYTES + 1))
    assert isinstance(filler.current, StagedPart)
    filler.discard()


def test_a_file_shorter_than_the_probe_is_sent_from_the_probe(tmp_path):
    clock = Clock()
    space, staging = space_for(tmp_path, clock=clock)
    filler = PartFiller(space, PartBuffers(PART, keep=2))
    filler.write(b"tiny")
    tail = filler.take()
    assert isinstance(tail, BytesPart) and tail.body() == b"tiny"
    assert space.budget.held == 0 and list(staging.files()) == []


# -- whose file is it ------------------------------------------------------------------------------
def test_staged_files_name_their_process_and_only_a_dead_ones_are_orphans(tmp_path):
    staging = Staging(tmp_path, 1 << 30)
    mine = staging.new_path()
    mine.write_bytes(b"x")
    assert mine.name.startswith(process_tag() + "-") and owner_alive(mine.name) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_tag = process_tag(child.pid)
    child.wait()
    dead = tmp_path / f"{dead_tag}-00ff.part"
    dead.write_bytes(b"x")
    reused = tmp_path / f"{os.getpid()}-1-00ff.part"  # this PID, another start time
    reused.write_bytes(b"x")
    other = tmp_path / "notes.txt"
    other.write_bytes(b"x")
    assert owner_alive(dead.name) is False and owner_alive(reused.name) is False
    assert owner_alive(other.name) is None
    assert sorted(staging.orphans()) == sorted([dead, reused])


# -- a full disk -----------------------------------------------------------------------------------
class Disk:
    """A disk that fills after ``room`` bytes written to it in all (a fault on write)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, path: Path) -> FullAfter:
        return FullAfter(path, self)


class FullAfter(io.RawIOBase):
    def __init__(self, path: Path, disk: Disk) -> None:
        self._file = open(path, "xb", buffering=0)
        self._disk = disk

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if len(data) > self._disk.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk.room -= len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def test_a_full_disk_is_a_507_and_the_part_file_is_removed(tmp_path):
    staging = Staging(tmp_path / "staging", 1 << 40, opener=Disk(100).open)
    part = StagedPart(staging)
    part.write(memoryview(b"x" * 100))
    with pytest.raises(errors.InsufficientStorage) as full:
        part.write(memoryview(b"y"))
    assert full.value.status == 507 and full.value.code == "insufficient_storage"
    part.release()
    assert list(staging.files()) == [] and staging.bytes == 0


class HeldFile(io.RawIOBase):
    """A staged file whose first write the disk holds (as dirty-page throttling does) until
    ``release`` is set: a plain ``threading`` wait, which blocks whatever thread calls it."""

    def __init__(self, path: Path, entered: threading.Event) -> None:
        self._file = open(path, "xb", buffering=0)
        self.entered = entered
        self.release = threading.Event()
        self.outcomes: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if not self.outcomes:
            self.entered.set()
            # the guard only ends a hang: the loop was blocked, and the test fails
            self.outcomes.append("released" if self.release.wait(10) else "held the loop")
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def test_a_staged_write_the_disk_holds_stops_no_other_request(tmp_path):
    """In the gevent worker each upload is a greenlet of one thread: a staged write that the
    kernel holds runs on a native thread (OffLoop), and meanwhile another request is answered.
    (Run in place, the write held the only thread: the other request was answered only after
    the hold ended; in the bench, part uploads' timeouts fired and clients got 502s.)"""
    gevent = pytest.importorskip("gevent")
    from gevent import pywsgi
    from gevent import socket as gsocket

    from gateway.storage.staging import OffLoop

    held: list[HeldFile] = []
    entered = threading.Event()

    def opener(path: Path) -> HeldFile:
        held.append(HeldFile(path, entered))
        return held[0]

    staging = Staging(tmp_path / "staging", 1 << 40, opener=opener, blocking=OffLoop(native=True))
    events: list[str] = []

    def app(environ, start_response):
        events.append("answered")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:

        def fill() -> StagedPart:
            part = StagedPart(staging)
            part.write(memoryview(b"slow bytes"))
            events.append("written")
            return part

        filling = gevent.spawn(fill)
        # until the write is held (waited for on a native thread: the loop keeps running)
        assert gevent.get_hub().threadpool.apply(entered.wait, (10,))
        conn = gsocket.create_connection(("127.0.0.1", server.server_port))
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
        conn.close()
        held[0].release.set()
        part = filling.get()
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert events == ["answered", "written"] and held[0].outcomes == ["released"]
    assert part.size == 10 and part.read() == b"slow bytes"
    assert part.sums("crc32c").headers == sums(b"slow bytes", "crc32c").headers
    part.release()
    assert list(staging.files()) == []


def test_off_the_loop_only_where_threads_are_greenlets(tmp_path):
    """OffLoop hands calls to native threads in a process gevent has patched (the gevent
    worker), and runs them in place elsewhere (gthread, the tests' own process)."""
    from gateway.storage.staging import OffLoop

    assert OffLoop().native is False
    probe = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import threading\n"
        "from gateway.storage.staging import OffLoop\n"
        "run = OffLoop()\n"
        "print(run.native, run(threading.get_native_id) != threading.get_native_id())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "True"]


class Recording:
    """A ``Blocking`` that runs each call in place and records what was called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, fn, /, *args):
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return fn(*args)


class Trickle(io.RawIOBase):
    """A file that takes at most 3 bytes per write, as a raw file may."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "xb", buffering=0)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self._file.write(bytes(data[:3]))

    def close(self) -> None:
        self._file.close()
        super().close()


def test_every_file_call_of_a_staged_part_goes_through_blocking(tmp_path):
    """Creating, writing and reading back a staged part: each through ``Staging.blocking``;
    a write the file takes only in part is finished; the body is read back exactly, in
    blocks of READ_BLOCK however little the HTTP client asks for."""
    from gateway.storage.staging import READ_BLOCK

    run = Recording()
    staging = Staging(tmp_path / "staging", 1 << 40, opener=Trickle, blocking=run)
    part = StagedPart(staging)
    data = bytes(range(256)) * (READ_BLOCK // 128 + 3)  # two blocks and a bit
    part.write(memoryview(data[:1000]))
    part.write(memoryview(data[1000:]))
    assert run.calls == ["Trickle", "_write", "_write"]
    assert part.size == len(data) and part.sums("md5").md5 == sums(data, "md5").md5
    body = part.body()
    assert isinstance(body, FileBody) and len(body) == len(data)
    run.calls.clear()
    reader = body.open()
    got = b""
    while chunk := reader.read(16 * KiB):
        assert len(chunk) <= 16 * KiB
        got += chunk
    reader.close()
    assert got == data
    assert run.calls == ["FileIO", "readinto", "readinto", "readinto", "readinto"]  # 3 blocks, end
    part.release()
    assert list(staging.files()) == [] and staging.bytes == 0


@pytest.fixture
def s3_form_app(tmp_path, moto_url):
    """The app on S3 where a second passes at each look at the clock: parts fill slowly."""
    from gateway import create_app

    from conftest import make_settings

    app = create_app(
        make_settings(
            tmp_path,
            backend="s3",
            moto_url=moto_url,
            staging_dir=str(tmp_path / "staging"),
            processing=False,
        )
    )
    svc = app.extensions["gateway"]
    svc.provision()
    ticks = itertools.count()
    svc.storage.space.clock = lambda: float(next(ticks))
    yield app
    svc.store.executor.shutdown(wait=True)


def form_body(data: bytes) -> tuple[bytes, dict[str, str]]:
    from support import form_body as body_of

    body, content_type = body_of(files=[("file", "a.png", data)])
    return body, {"Content-Type": content_type}


def bearer(app) -> dict[str, str]:
    from gateway.http.auth import mint_token

    with app.app_context():
        return {"Authorization": f"Bearer {mint_token('alice')}"}


def test_a_form_upload_staged_on_a_disk_that_fills_answers_507_and_keeps_nothing(
    s3_form_app, tmp_path
):
    svc = s3_form_app.extensions["gateway"]
    staging_dir = tmp_path / "staging"
    svc.storage.space.staging.opener = Disk(7 * MiB).open  # the second part does not fit
    body, headers = form_body(png_bytes(12 * MiB))
    answer = s3_form_app.test_client().post(
        "/api/upload?projectId=p1",
        data=body,
        headers={**headers, **bearer(s3_form_app)},
    )
    assert answer.status_code == 507
    assert answer.get_json()["error"]["code"] == "insufficient_storage"
    assert_nothing_left(svc)
    assert list(staging_dir.iterdir()) == []


def test_a_staged_form_upload_is_stored_exactly_and_its_files_are_removed(s3_form_app):
    svc = s3_form_app.extensions["gateway"]
    made: list[Path] = []
    staging = svc.storage.space.staging
    plain = staging.opener
    staging.opener = lambda path: made.append(path) or plain(path)
    data = png_bytes(13 * MiB)
    body, headers = form_body(data)
    answer = s3_form_app.test_client().post(
        "/api/upload?projectId=p1",
        data=body,
        headers={**headers, **bearer(s3_form_app)},
    )
    assert answer.status_code == 201, answer.get_json()
    # 13 MiB in 6 MiB parts, each through a staged file (the first began in memory, its first
    # 256 KiB having come in one read, and moved to disk once it fell behind the fast pace)
    assert len(made) == 3
    assert_stored(svc, answer.get_json(), data)
    assert list(staging.files()) == []


# -- through gunicorn: disconnect, SIGKILL, back-pressure ------------------------------------------
@pytest.fixture
def staged_stack(tmp_path, moto_url):
    with gateway_stack(
        tmp_path / "stack",
        mode="s3",
        moto_url=moto_url,
        GATEWAY_WORKERS="1",
        GATEWAY_STAGING_DIR=str(tmp_path / "staging"),
        GATEWAY_STAGE_BELOW_RATE=str(1 << 50),  # no client is this fast: every part is staged
        GATEWAY_PROCESSING="off",
    ) as stack:
        stack.svc.provision()
        yield stack


def start_slow_upload(stack, size: int, sent: int) -> socket.socket:
    """A form upload of ``size`` bytes of which ``sent`` arrive, then the client waits."""
    body, headers = form_body(png_bytes(size))
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            "POST /api/upload?projectId=p1 HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {stack.token}\r\nContent-Type: {headers['Content-Type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
    )
    for start in range(0, sent, 64 * KiB):
        sock.sendall(body[start : min(sent, start + 64 * KiB)])
    return sock


def staged_files(stack) -> list[Path]:
    directory = Path(stack.env["GATEWAY_STAGING_DIR"])
    return sorted(directory.iterdir()) if directory.is_dir() else []


def s3_left(stack) -> tuple[int, list]:
    s3 = stack.svc.store
    objects = s3.client.list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0)
    return objects, s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


def test_a_client_that_disconnects_leaves_no_staged_file(staged_stack):
    sock = start_slow_upload(staged_stack, 12 * MiB, 7 * MiB)  # one part sent, one filling
    poll(lambda: len(staged_files(staged_stack)) == 1, timeout=30)
    poll(lambda: len(s3_left(staged_stack)[1]) == 1, timeout=30)
    sock.close()
    poll(lambda: staged_files(staged_stack) == [], timeout=30)
    poll(lambda: s3_left(staged_stack) == (0, []), timeout=30)


def test_a_worker_killed_mid_upload_leaves_its_staged_file_to_the_sweeper(staged_stack):
    sock = start_slow_upload(staged_stack, 12 * MiB, 2 * MiB)
    with sock:
        poll(lambda: len(staged_files(staged_stack)) == 1, timeout=30)
        (staged,) = staged_files(staged_stack)
        worker = int(staged.name.split("-")[0])
        master = staged_stack.procs["gunicorn"].pid
        assert worker != master and owner_alive(staged.name) is True
        dry = staged_stack.flask("sweep", "--older-than", "0s", "--dry-run")
        assert staged.name not in dry  # its owner lives: not the sweeper's
        os.kill(worker, signal.SIGKILL)
        poll(lambda: owner_alive(staged.name) is False, timeout=30)
    assert staged.exists()  # nobody else removes it
    report = staged_stack.flask("sweep", "--older-than", "0s")
    assert f"remove staged part {staged.name}" in report
    assert staged_files(staged_stack) == []


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


def test_with_a_tiny_budget_concurrent_uploads_wait_and_all_finish(tmp_path, moto_url):
    budget = 64 * KiB  # 16 KiB of reads at once; no part fits: every part is staged
    metrics_port = free_port()
    with gateway_stack(
        tmp_path / "stack",
        mode="s3",
        moto_url=moto_url,
        GATEWAY_WORKERS="1",
        GATEWAY_MEMORY_BUDGET=str(budget),
        GATEWAY_STAGING_DIR=str(tmp_path / "staging"),
        GATEWAY_PROCESSING="off",
        GATEWAY_METRICS_BIND=f"127.0.0.1:{metrics_port}",
    ) as stack:
        stack.svc.provision()
        files = [png_bytes(3 * MiB + i * 1000, seed=i) for i in range(8)]
        port = int(stack.gateway_url.rsplit(":", 1)[1])

        def upload(data: bytes) -> tuple[int, dict]:
            body, headers = form_body(data)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request(
                "POST",
                "/api/upload?projectId=p1",
                body=body,
                headers={**headers, "Authorization": f"Bearer {stack.token}"},
            )
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read())

        with ThreadPoolExecutor(len(files)) as pool:
            answers = list(pool.map(upload, files))
        assert [status for status, _ in answers] == [201] * len(files)  # none refused
        for data, (_, body) in zip(files, answers, strict=True):
            assert_stored(stack.svc, body, data)
        assert staged_files(stack) == []
        scrape = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        scrape.request("GET", "/metrics")
        text = scrape.getresponse().read().decode()
        # Reads only (no part buffer, not even a probe, fits): held within the budget. Whether a
        # read waited depends on how the worker interleaves the requests (a read holds nothing
        # while it waits for the socket); that a read waits for room, is woken and is never
        # refused is shown in-process above.
        assert 0 < metric(text, "gateway_body_memory_peak_bytes") <= budget
        metric(text, "gateway_body_read_waits_total")  # exported (raises when missing)
