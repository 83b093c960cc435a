"""The image's HEALTHCHECK (docs/deployment.md): one check for every command the image runs.

- gunicorn in the container: GET /healthz on GATEWAY_BIND (0.0.0.0 and :: are asked on loopback;
  ``unix:/path`` over the socket): healthy on 200.
- the processing worker (``flask --app wsgi worker``): GET /metrics on
  GATEWAY_WORKER_METRICS_BIND when it is set; otherwise healthy while it runs (it is the
  container's process: when it ends, the container ends).
- anything else (``flask --app wsgi init``, ``sweep``, a shell): healthy.

Standard library only, no other gateway module: it runs every interval beside the server
(``python -m gateway.healthcheck``).
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from pathlib import Path

TIMEOUT = 2.0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def connection(bind: str) -> http.client.HTTPConnection:
    """A connection to a gunicorn-style bind address, on loopback for a wildcard host."""
    if bind.startswith("unix:"):
        return UnixConnection(bind[len("unix:") :])
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 (the wildcard gunicorn listens on, asked on loopback)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def answers_200(bind: str, path: str) -> bool:
    conn = connection(bind)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def commands() -> list[list[str]]:
    """The argv of every process in the container."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                found.append([part.decode(errors="replace") for part in raw.split(b"\0") if part])
    return found


def role(argvs: list[list[str]]) -> str:
    """ "gateway" when gunicorn runs, "worker" when the processing worker runs, else "other"."""
    names = [[Path(arg).name for arg in argv[:2]] + argv[2:] for argv in argvs]
    if any("gunicorn" in argv[:2] for argv in names):
        return "gateway"
    if any("flask" in argv[:2] and "worker" in argv for argv in names):
        return "worker"
    return "other"


def healthy(environ: dict[str, str], argvs: list[list[str]]) -> bool:
    kind = role(argvs)
    if kind == "gateway":
        return answers_200(environ.get("GATEWAY_BIND", "127.0.0.1:8000"), "/healthz")
    if kind == "worker" and environ.get("GATEWAY_WORKER_METRICS_BIND"):
        return answers_200(environ["GATEWAY_WORKER_METRICS_BIND"], "/metrics")
    return True


if __name__ == "__main__":
    sys.exit(0 if healthy(dict(os.environ), commands()) else 1)
