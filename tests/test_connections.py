"""Many connections per node (docs/deployment.md, "Many connections"): the shipped configs
(nginx/nginx.conf, nginx/gateway.conf, gunicorn.conf.py) read as they ship, their numbers checked
against each other and against the gateway's body limits; then 2,000 slow uploads held at once
through the real nginx and gunicorn."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import requests

from e2e_harness import gateway_stack, nginx_connection_limits, poll
from support import JWT_SECRET, assert_stored, free_port, leftovers, png_bytes

ROOT = Path(__file__).resolve().parent.parent
NGINX_MAIN = (ROOT / "nginx" / "nginx.conf").read_text()
NGINX_SERVER = (ROOT / "nginx" / "gateway.conf").read_text()
TARGET = 10_000  # slow uploads per node (issue 26)
UPLOAD_LOCATIONS = ("location = /api/upload", "location /api/tus/")


def _uncommented(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def directive(text: str, name: str) -> list[str]:
    """Every value of ``name`` in ``text`` (any context), in order."""
    return re.findall(rf"(?:^|[;{{}}\s]){name}\s+([^;]+);", _uncommented(text))


def block(text: str, opening: str) -> str:
    """The body of the block that ``opening`` starts (braces matched)."""
    text = _uncommented(text)
    start = text.index(opening)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    raise ValueError(f"unclosed block {opening!r}")


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value.strip()).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def gunicorn_conf(nofile: tuple[int, int], **env: str) -> tuple[dict, str]:
    """gunicorn.conf.py run as gunicorn runs it, under that RLIMIT_NOFILE: what it sets."""
    script = (
        "import json, resource, runpy\n"
        "ns = runpy.run_path('gunicorn.conf.py')\n"
        "print(json.dumps({'asked': ns['asked_connections'],\n"
        "    'worker_connections': ns['worker_connections'],\n"
        "    'needed': ns['open_files_needed'](ns['asked_connections']),\n"
        "    'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_JWT_SECRET": JWT_SECRET, **env},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# -- the numbers hang together --------------------------------------------------------------------
def test_one_nginx_worker_holds_both_connections_of_every_upload_gunicorn_takes():
    conf, _ = gunicorn_conf((1024, hard_limit()))
    per_worker = int(directive(NGINX_MAIN, "worker_connections")[0])
    # An upload through the proxy is two connections (the client's and the upstream one), and
    # one gunicorn worker may take the node's whole load; /healthz and the small routes need room.
    assert conf["asked"] >= TARGET
    assert per_worker >= 2 * conf["asked"] + 1000
    assert directive(NGINX_MAIN, "worker_processes") == ["auto"]


def test_nginx_may_open_a_file_for_every_connection():
    (rlimit,) = directive(NGINX_MAIN, "worker_rlimit_nofile")
    (connections,) = directive(NGINX_MAIN, "worker_connections")
    assert int(rlimit) >= 2 * int(connections)  # connections, and temp files or logs besides


def test_the_documented_open_files_limit_covers_gunicorns_default_connections():
    conf, _ = gunicorn_conf((1024, hard_limit()))
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    (limit,) = set(re.findall(r"LimitNOFILE=(\d+)", deployment))
    assert f"--ulimit nofile={limit}:{limit}" in deployment
    assert f"--ulimit nofile={limit}:{limit}" in dockerfile
    assert int(limit) >= conf["needed"] == 2 * conf["asked"] + 256


def test_gunicorn_raises_its_soft_open_files_limit_to_what_its_connections_need():
    if hard_limit() < 2256:
        pytest.skip("the hard limit of open files here is below 2,256")
    conf, err = gunicorn_conf((1024, hard_limit()), GATEWAY_WORKER_CONNECTIONS="1000")
    assert conf["nofile"] == [2256, hard_limit()]  # 1,000 x 2 + 256, no more
    assert conf["worker_connections"] == 1000
    assert "GATEWAY_WORKER_CONNECTIONS" not in err


def test_gunicorn_takes_fewer_connections_than_a_low_hard_limit_would_run_out_of():
    conf, err = gunicorn_conf((1024, 2000), GATEWAY_WORKER_CONNECTIONS="1000")
    assert conf["nofile"] == [2000, 2000]
    assert conf["worker_connections"] == (2000 - 256) // 2 == 872
    assert "allows 872 connections per worker, not GATEWAY_WORKER_CONNECTIONS=1000" in err


def test_a_soft_limit_already_high_enough_is_left_alone():
    conf, err = gunicorn_conf((3000, 3000), GATEWAY_WORKER_CONNECTIONS="1000")
    assert conf["nofile"] == [3000, 3000]
    assert conf["worker_connections"] == 1000
    assert err == ""


@pytest.mark.parametrize("location", UPLOAD_LOCATIONS)
def test_uploads_stream_through_small_relay_buffers(location):
    body = block(NGINX_SERVER, location)
    assert directive(body, "proxy_request_buffering") == ["off"]
    (size,) = directive(body, "client_body_buffer_size")
    # nginx touches the whole buffer of a slow upload: 10,000 x 16 KiB is 160 MiB
    assert size.endswith("k") and int(size[:-1]) <= 16


def test_nginx_leaves_slow_bodies_to_the_gateways_limits():
    """A body that stalls or trickles is the gateway's to end (its JSON 408 and its rollback):
    nginx must wait longer than any wait the gateway allows, and not forever."""
    from gateway.config import Settings

    defaults = Settings.from_env({"GATEWAY_JWT_SECRET": JWT_SECRET})
    server = _uncommented(NGINX_SERVER)
    (body_timeout,) = directive(server, "client_body_timeout")
    longest_wait = max(defaults.body_idle_timeout, defaults.body_rate_grace)
    assert longest_wait < seconds(body_timeout) <= 300
    assert defaults.body_min_rate > 0  # a trickle is ended, not only a stall
    for location in UPLOAD_LOCATIONS:
        assert not directive(block(server, location), "client_body_timeout")  # not overridden
    (header_timeout,) = directive(server, "client_header_timeout")
    assert seconds(header_timeout) <= 60


def test_the_test_nginx_runs_the_shipped_connection_limits():
    limits = nginx_connection_limits()
    assert directive(limits, "worker_connections") == directive(NGINX_MAIN, "worker_connections")
    assert directive(limits, "worker_rlimit_nofile") == directive(
        NGINX_MAIN, "worker_rlimit_nofile"
    )


# -- 2,000 slow uploads held at once through nginx and gunicorn ----------------------------------------
HELD = 2000
FINISHED = 20  # of them, sent to the end at full speed; the others go away mid-body
SIZE = 1 << 20
PIECE = 1024  # every 0.5 s: 2 KiB/s, above the gateway's 1 KiB/s minimum
BOUNDARY = "heldboundary7Qx"


def _in_flight(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_uploads_in_flight{")
    )


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


class HeldUploads:
    """``HELD`` form uploads to nginx, opened over a few seconds, each sending ``PIECE`` bytes
    every 0.5 s until ``finish``: then the first ``FINISHED`` send the rest and read their
    answer, the others close."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.opened = 0
        self.early: list[bytes] = []  # answers that came before the body ended
        self.answers: dict[int, bytes] = {}
        self.contents = {i: png_bytes(SIZE, seed=i) for i in range(FINISHED)}
        self.common = png_bytes(SIZE, seed=99)
        self.loop = asyncio.new_event_loop()
        self.finish = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),))

    async def one(self, i: int) -> None:
        await asyncio.sleep(4.0 * i / HELD)
        content = self.contents.get(i, self.common)
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="held{i}.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            (
                "POST /api/upload?projectId=p1 HTTP/1.1\r\nHost: held\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(head) + SIZE + len(tail)}\r\n\r\n"
            ).encode()
            + head
        )
        answer = asyncio.ensure_future(reader.read())
        sent = 0
        try:
            await writer.drain()
            self.opened += 1
            while not self.finish.is_set() and not answer.done() and sent < SIZE // 2:
                writer.write(content[sent : sent + PIECE])
                sent += PIECE
                await writer.drain()
                try:
                    await asyncio.wait_for(self.finish.wait(), 0.5)
                except TimeoutError:
                    pass
            if answer.done():
                self.early.append(answer.result())
            elif i < FINISHED:
                writer.write(content[sent:] + tail)
                await writer.drain()
                self.answers[i] = await asyncio.wait_for(answer, 120)
        finally:
            answer.cancel()
            writer.close()

    async def run(self) -> None:
        self.finish = asyncio.Event()
        await asyncio.gather(*(self.one(i) for i in range(HELD)), return_exceptions=True)

    def __enter__(self) -> HeldUploads:
        self.thread.start()
        return self

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.finish.set)
        self.thread.join(300)

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.end()


@pytest.mark.slow
def test_two_thousand_slow_uploads_are_all_held_while_healthz_answers(tmp_path):
    """2,000 uploads trickling at 2 KiB/s through the shipped nginx config (its connection
    limits included) and gunicorn.conf.py, all at once: the gateway has every one in flight,
    /healthz answers meanwhile; then 20 finish (stored exactly) and the rest go away (nothing
    left of them). With the limits before (1,024 nginx connections, 1,000 per gunicorn worker)
    nginx refuses connections and /healthz waits behind the uploads."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < HELD + 500:
        pytest.skip(f"the hard limit of open files here ({hard}) is below {HELD + 500}")
    metrics = f"127.0.0.1:{free_port()}"
    try:
        with gateway_stack(tmp_path, mode="embedded", GATEWAY_METRICS_BIND=metrics) as stack:
            # gunicorn started with this process's soft limit and raised its own
            workers = _children(stack.procs["gunicorn"].pid)
            assert len(workers) == 2
            for pid in workers:
                assert _open_files(pid) == (min(hard, 2 * 10_000 + 256), hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for the client's sockets
            with HeldUploads(stack.nginx_port, stack.token) as held:
                in_flight = poll(
                    lambda: _in_flight(f"http://{metrics}/metrics") == HELD or held.early,
                    timeout=120,
                    interval=0.5,
                )
                assert held.early == []
                assert in_flight and held.opened == HELD
                for _ in range(5):
                    assert requests.get(stack.url + "/healthz", timeout=10).status_code == 200
                assert _in_flight(f"http://{metrics}/metrics") == HELD  # still all of them
                held.end()
            assert held.early == []
            assert sorted(held.answers) == list(range(FINISHED))
            bodies = {}
            for i, raw in held.answers.items():
                assert raw.startswith(b"HTTP/1.1 201"), raw[:300]
                bodies[i] = json.loads(raw.split(b"\r\n\r\n", 1)[1])["files"][0]
            for i, body in bodies.items():
                assert_stored(stack.svc, body, held.contents[i])
            # the others went away mid-body: nothing of them is left
            assert poll(
                lambda: (
                    len(leftovers(stack.svc)["records"]) == FINISHED
                    and not leftovers(stack.svc)["pending_uploads"]
                ),
                timeout=120,
            ), leftovers(stack.svc)
            assert len(leftovers(stack.svc)["objects"]) == FINISHED
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
