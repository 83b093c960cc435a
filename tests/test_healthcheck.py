"""The image's HEALTHCHECK script (gateway/healthcheck.py) outside Docker: which check each command
gets, the address it asks, and both answers. tests/test_image.py runs it inside the image."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import healthcheck

from support import free_port

GUNICORN = ["/usr/bin/python3", "/usr/local/bin/gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
WORKER = ["/usr/bin/python3", "/usr/local/bin/flask", "--app", "wsgi", "worker"]


@pytest.mark.parametrize(
    ("argvs", "role"),
    [
        ([GUNICORN], "gateway"),
        ([["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]], "gateway"),
        ([["/sbin/docker-init", "--", "gunicorn"], GUNICORN], "gateway"),  # docker run --init
        ([WORKER], "worker"),
        ([["flask", "--app", "wsgi", "worker", "--concurrency", "2"]], "worker"),
        ([["/usr/bin/python3", "/usr/local/bin/flask", "--app", "wsgi", "init"]], "other"),
        ([["sh", "-c", "echo worker gunicorn"]], "other"),  # named only as arguments
        ([["/usr/bin/python3", "-m", "gateway.healthcheck"]], "other"),
        ([], "other"),
    ],
)
def test_the_role_comes_from_the_processes(argvs, role):
    assert healthcheck.role(argvs) == role


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("0.0.0.0:8000", "127.0.0.1", 8000),
        (":8000", "127.0.0.1", 8000),
        ("[::]:9000", "::1", 9000),
        ("127.0.0.1:8123", "127.0.0.1", 8123),
        ("[::1]:81", "::1", 81),
        ("10.1.2.3:80", "10.1.2.3", 80),
    ],
)
def test_a_wildcard_bind_is_asked_on_loopback(bind, host, port):
    conn = healthcheck.connection(bind)
    assert (conn.host, conn.port) == (host, port)


def test_a_unix_bind_is_asked_over_its_socket():
    conn = healthcheck.connection("unix:/run/gateway.sock")
    assert isinstance(conn, healthcheck.UnixConnection) and conn.path == "/run/gateway.sock"


class Answer(http.server.BaseHTTPRequestHandler):
    statuses: dict[str, int] = {}

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (204, False)])
def test_the_gateway_is_healthy_only_on_200_from_its_bind(server, monkeypatch, status, healthy):
    monkeypatch.setattr(Answer, "statuses", {"/healthz": status})
    assert healthcheck.healthy({"GATEWAY_BIND": server}, [GUNICORN]) is healthy
    # The worker's address is not the gateway's.
    assert healthcheck.healthy({"GATEWAY_WORKER_METRICS_BIND": server}, [GUNICORN]) is False


def test_the_gateway_without_a_listener_is_unhealthy():
    assert healthcheck.healthy({"GATEWAY_BIND": f"127.0.0.1:{free_port()}"}, [GUNICORN]) is False


def test_the_default_bind_is_gunicorn_confs(monkeypatch):
    asked = []
    monkeypatch.setattr(healthcheck, "answers_200", lambda bind, path: asked.append(bind) or True)
    assert healthcheck.healthy({}, [GUNICORN]) is True
    assert asked == ["127.0.0.1:8000"]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (500, False)])
def test_a_worker_with_metrics_is_healthy_when_they_answer(server, monkeypatch, status, healthy):
    monkeypatch.setattr(Answer, "statuses", {"/metrics": status})
    env = {"GATEWAY_WORKER_METRICS_BIND": server, "GATEWAY_BIND": f"127.0.0.1:{free_port()}"}
    assert healthcheck.healthy(env, [WORKER]) is healthy


def test_a_worker_without_metrics_and_other_commands_are_healthy_while_they_run():
    closed = {"GATEWAY_BIND": f"127.0.0.1:{free_port()}"}
    assert healthcheck.healthy(closed, [WORKER]) is True
    assert healthcheck.healthy(closed, [["flask", "--app", "wsgi", "sweep"]]) is True


def test_the_processes_are_read_from_proc():
    argvs = healthcheck.commands()
    assert argvs and all(isinstance(arg, str) for argv in argvs for arg in argv)
    assert any(Path(argv[0]).name.startswith("python") for argv in argvs if argv)
