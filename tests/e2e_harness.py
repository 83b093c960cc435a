"""End-to-end harness: real gunicorn behind real nginx, on free loopback ports, in a tmp dir.

``gateway_stack(tmp, mode=...)`` starts, in order:
  1. ``flask --app wsgi init`` (schema, bucket) and ``flask --app wsgi token`` with the stack's env,
  2. gunicorn (``gunicorn -c gunicorn.conf.py wsgi:app``, 2 gevent workers) on 127.0.0.1:<port>,
  3. nginx on 127.0.0.1:<port>, configured by the production template ``nginx/gateway.conf``
     rendered into the tmp dir (never a copy) and included from a small test nginx.conf whose
     pid, logs and temp paths all live in the tmp dir, and whose connection limits
     (``worker_rlimit_nofile``, the ``events`` block) are the shipped ``nginx/nginx.conf``'s,
and stops what it started, by PID, on exit. The in-process ``Services`` built from the very
same env (``Settings.from_env``) lets tests inspect the object store and the record store.

nginx is installed with apt-get when it is missing (and curl likewise), so a fresh machine runs
these tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from support import JWT_SECRET, env_for_aws, free_port, stop, unique, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "nginx" / "gateway.conf"
NGINX_MAIN = ROOT / "nginx" / "nginx.conf"
BIN = Path(sys.executable).parent  # the virtualenv's bin: gunicorn, flask
PLACEHOLDER_RE = re.compile(r"\{\{[A-Z_]+\}\}")
MiB = 1024 * 1024


# -- tools -----------------------------------------------------------------------------------------
def _apt_install(packages: Iterable[str]) -> None:
    """``apt-get update && apt-get install -y <first package that installs>``."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    # RUNLEVEL=1: the package's postinst must not start a system-wide nginx on port 80.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    subprocess.run(
        [*sudo, "apt-get", "update"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = []
    for package in packages:
        done = subprocess.run(
            [*sudo, "apt-get", "install", "-y", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return
        errors.append(f"{package}: {done.stderr.strip()[-500:]}")
    raise RuntimeError("could not install " + " / ".join(errors))


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )


def _ensure(binary: str, packages: list[str]) -> str:
    """The binary, installed from the first of ``packages`` that installs when it is missing."""
    found = _find(binary)
    if found is None:
        _apt_install(packages)
        found = _find(binary)
    if found is None:
        raise RuntimeError(f"{binary} is still missing after apt-get install")
    return found


def ensure_nginx() -> str:
    return _ensure("nginx", ["nginx-light", "nginx"])


def ensure_curl() -> str:
    return _ensure("curl", ["curl"])


def ensure_chromium() -> str:
    """Debian's chromium (playwright drives it: browser downloads are not possible here)."""
    return _ensure("chromium", ["chromium"])


# -- nginx config ----------------------------------------------------------------------------------
def render_gateway_conf(
    *, listen: str, upstream: str, media_root: Path | str, access_log: Path | str
) -> str:
    """The production template with its placeholders filled in (the same values as sed would)."""
    text = NGINX_TEMPLATE.read_text()
    for name, value in (
        ("LISTEN", listen),
        ("UPSTREAM", upstream),
        ("MEDIA_ROOT", str(media_root).rstrip("/")),
        ("ACCESS_LOG", str(access_log)),
    ):
        text = text.replace("{{" + name + "}}", value)
    left = PLACEHOLDER_RE.findall(text)
    if left:
        raise ValueError(f"unrendered placeholders in {NGINX_TEMPLATE}: {sorted(set(left))}")
    return text


def _mime_types_include() -> str:
    for candidate in (
        Path("/etc/nginx/mime.types"),
        Path("/usr/local/etc/nginx/mime.types"),
        Path("/usr/local/nginx/conf/mime.types"),
    ):
        if candidate.is_file():
            return f"include {candidate};"
    return "types { image/png png; image/jpeg jpg jpeg; video/mp4 mp4; }"


def nginx_connection_limits() -> str:
    """The shipped main config's ``worker_rlimit_nofile`` line and ``events`` block, as they are
    (the test config's own paths and one worker process otherwise)."""
    text = re.sub(r"#[^\n]*", "", NGINX_MAIN.read_text())
    rlimit = re.search(r"^\s*worker_rlimit_nofile\s+\d+;", text, re.M)
    events = re.search(r"^\s*events\s*\{[^{}]*\}", text, re.M)
    if rlimit is None or events is None:
        raise ValueError(f"{NGINX_MAIN}: no worker_rlimit_nofile or events block")
    lines = [rlimit.group(0), *events.group(0).splitlines()]
    return "\n".join(line.strip() for line in lines if line.strip())


def write_test_nginx_conf(
    run_dir: Path, *, listen: str, upstream: str, media_root: Path, worker_processes: int = 1
) -> Path:
    """A main nginx.conf for an unprivileged-path instance: everything under ``run_dir``."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / "temp" / sub).mkdir(parents=True, exist_ok=True)
    server = run_dir / "gateway.conf"
    server.write_text(
        render_gateway_conf(
            listen=listen,
            upstream=upstream,
            media_root=media_root,
            access_log=run_dir / "access.log",
        )
    )
    # As root, nginx would drop its workers to "nobody", who cannot read pytest's 0700 tmp
    # dirs; keep them as the current user instead.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = run_dir / "temp"
    conf = run_dir / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes {worker_processes};
{user}
pid {run_dir / "nginx.pid"};
error_log {run_dir / "error.log"} info;
{nginx_connection_limits()}
http {{
    {_mime_types_include()}
    default_type application/octet-stream;
    client_body_temp_path {temp / "client_body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {server};
}}
""")
    return conf


def nginx_check(nginx: str, conf: Path, run_dir: Path) -> None:
    done = subprocess.run(
        [nginx, "-t", "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{done.stderr}")


# -- the stack -------------------------------------------------------------------------------------
@dataclass
class Stack:
    mode: str
    tmp: Path
    env: dict[str, str]  # the GATEWAY_* (and AWS_*) env gunicorn runs with
    settings: object  # gateway.config.Settings from that same env
    svc: object  # gateway.services.Services from those settings
    token: str  # `flask token --sub alice --projects p1`
    gateway_url: str  # gunicorn, direct
    url: str  # nginx in front of it
    nginx_port: int
    media_root: Path
    run_dir: Path
    curl_bin: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # -- requests ---------------------------------------------------------------------------
    def curl(
        self,
        *args: str,
        path: str = "/api/upload",
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> CurlResult:
        """Run real curl against nginx: ``curl -sS <args> [-H auth] URL``; status, headers, body."""
        out = self.tmp / f"curl-{unique('out')}"
        cmd = [
            self.curl_bin,
            "-sS",
            "-o",
            str(out),
            "-D",
            str(out) + ".h",
            "-w",
            "%{http_code}",
            "--max-time",
            str(int(timeout)),
        ]
        if token is not None:
            cmd += ["-H", f"Authorization: Bearer {self.token if token == 'default' else token}"]
        for name, value in (headers or {}).items():
            cmd += ["-H", f"{name}: {value}"]
        cmd += [*args, self.url + path]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
        raw_headers = (
            Path(str(out) + ".h").read_text(errors="replace")
            if Path(str(out) + ".h").exists()
            else ""
        )
        body = out.read_bytes() if out.exists() else b""
        for leftover in (out, Path(str(out) + ".h")):
            leftover.unlink(missing_ok=True)
        return CurlResult(
            returncode=done.returncode,
            status=int(done.stdout or 0),
            headers=_last_header_block(raw_headers),
            body=body,
            stderr=done.stderr,
            command=cmd,
        )

    def raw(
        self,
        head: bytes,
        body_chunks: Iterable[bytes] = (),
        *,
        read_reply: bool = True,
        timeout: float = 30,
        to_gunicorn: bool = False,
    ) -> RawResult | None:
        """Send bytes on a plain socket to nginx (or gunicorn itself), then (optionally) read
        one HTTP response."""
        port = int(self.gateway_url.rsplit(":", 1)[1]) if to_gunicorn else self.nginx_port
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
            return read_response(sock) if read_reply else None

    def start_worker(self, name: str = "worker", **env: str) -> subprocess.Popen:
        """``flask --app wsgi worker`` with the stack's settings (stopped with the stack)."""
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [str(BIN / "flask"), "--app", "wsgi", "worker"],
            cwd=ROOT,
            env={**_clean_env(), **self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def flask(self, *args: str) -> str:
        """``flask --app wsgi <args>`` with the stack's settings; its stdout."""
        return _flask(list(args), self.env)

    def worker_log(self, name: str = "worker") -> list[dict]:
        return self.json_lines(f"{name}.log")

    def json_lines(self, log_name: str) -> list[dict]:
        """The JSON lines of one of the stack's logs (gunicorn.log, <worker>.log)."""
        lines = []
        path = self.tmp / log_name
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines

    # -- the stores -------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the object store, pending uploads and records (between tests)."""
        from support import record_ids

        svc = self.svc
        for upload in list(svc.store.pending_uploads()):
            svc.store.abort_pending(upload)
        for obj in list(svc.store.objects()):
            svc.store.delete(obj.key)
        for media_id in record_ids(svc.records):
            svc.records.delete(media_id)

    def logs(self) -> str:
        parts = []
        for name in ("gunicorn.log", "error.log", "access.log"):
            path = (self.tmp if name == "gunicorn.log" else self.run_dir) / name
            if path.exists():
                parts.append(f"--- {name} (tail) ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def access_log_lines(self) -> list[dict]:
        path = self.run_dir / "access.log"
        if not path.exists():
            return []
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return lines


@dataclass
class CurlResult:
    returncode: int
    status: int
    headers: dict[str, str]  # lower-cased names, last response only (not 100 Continue)
    body: bytes
    stderr: str
    command: list[str]

    def json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(
                f"not JSON ({self.status}): {self.body[:500]!r} {self.stderr}"
            ) from None


@dataclass
class RawResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not JSON ({self.status}): {self.body[:500]!r}") from None


def _last_header_block(raw: str) -> dict[str, str]:
    blocks = [b for b in re.split(r"\r?\n\r?\n", raw) if b.strip()]
    if not blocks:
        return {}
    headers = {}
    for line in blocks[-1].splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def read_response(sock: socket.socket) -> RawResult:
    """One HTTP/1.1 response from a socket (Content-Length framed, or until EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        body = body[:length]
    else:
        while chunk := sock.recv(65536):
            body += chunk
    return RawResult(status=status, headers=headers, body=body)


def _clean_env() -> dict[str, str]:
    """The parent's env without any GATEWAY_* setting (the stack sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def _flask(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def stack_env(
    tmp: Path, *, mode: str, gateway_port: int, moto_url: str | None = None, **overrides: str
) -> dict[str, str]:
    env = {
        "GATEWAY_BIND": f"127.0.0.1:{gateway_port}",
        "GATEWAY_WORKERS": "2",
        "GATEWAY_TRUSTED_PROXIES": "1",
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_STORAGE_URL": str(tmp / "media"),
        "GATEWAY_RECORDS_URL": f"sqlite:///{tmp / 'records.db'}",
        "GATEWAY_ORPHAN_JOURNAL": str(tmp / "orphans.jsonl"),
        "GATEWAY_QUEUE_URL": f"sqlite:///{tmp / 'queue.db'}",
        "GATEWAY_SHUTDOWN_DELAY": "0",  # stopping a stack needs no load balancer to drain
    }
    if mode == "s3":
        if not moto_url:
            raise ValueError("S3 mode needs a moto server URL")
        env.update(env_for_aws())
        env.update(
            GATEWAY_STORAGE_URL=f"s3://{unique('e2e')}/uploads", GATEWAY_S3_ENDPOINT_URL=moto_url
        )
    elif mode != "embedded":
        raise ValueError(f"unknown mode {mode!r}")
    env.update(overrides)
    return env


@contextlib.contextmanager
def gateway_stack(
    tmp: Path,
    *,
    mode: str = "embedded",
    moto_url: str | None = None,
    wsgi_app: str = "wsgi:app",
    **overrides: str,
) -> Iterator[Stack]:
    """gunicorn + nginx for ``mode`` ("embedded": local dir + SQLite; "s3": moto + SQLite).

    ``overrides``: more GATEWAY_* env vars; ``wsgi_app``: gunicorn's app spec (for experiments).
    """
    from gateway.config import Settings
    from gateway.services import Services

    nginx, curl_bin = ensure_nginx(), ensure_curl()
    tmp.mkdir(parents=True, exist_ok=True)
    media_root = tmp / "media"
    media_root.mkdir(exist_ok=True)
    run_dir = tmp / "nginx"
    run_dir.mkdir(exist_ok=True)
    gateway_port, nginx_port = free_port(), free_port()
    env = stack_env(tmp, mode=mode, gateway_port=gateway_port, moto_url=moto_url, **overrides)
    if mode == "s3":
        os.environ.update(env_for_aws())  # for the in-process boto3 client below

    _flask(["init"], env)
    token = _flask(["token", "--sub", "alice", "--projects", "p1"], env).strip().splitlines()[-1]
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("GATEWAY_")})
    svc = Services.from_settings(settings)

    stack = Stack(
        mode=mode,
        tmp=tmp,
        env=env,
        settings=settings,
        svc=svc,
        token=token,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        url=f"http://127.0.0.1:{nginx_port}",
        nginx_port=nginx_port,
        media_root=media_root,
        run_dir=run_dir,
        curl_bin=curl_bin,
    )
    log = open(tmp / "gunicorn.log", "ab")
    try:
        stack.procs["gunicorn"] = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", wsgi_app],
            cwd=ROOT,
            env={**_clean_env(), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(stack.gateway_url + "/healthz", proc=stack.procs["gunicorn"])
        stack.procs["nginx"] = start_nginx(
            run_dir,
            port=nginx_port,
            upstream=f"127.0.0.1:{gateway_port}",
            media_root=media_root,
            nginx=nginx,
        )
        _wait_ok(stack.url + "/healthz", stack.procs["nginx"])
        yield stack
    finally:
        for name, proc in stack.procs.items():
            if name not in ("nginx", "gunicorn"):
                stop(proc, timeout=15)
        for name in ("nginx", "gunicorn"):
            if name in stack.procs:
                stop(stack.procs[name], timeout=15)
        log.close()
        executor = getattr(svc.store, "executor", None)
        if executor is not None:
            executor.shutdown(wait=False)


def start_nginx(
    run_dir: Path, *, port: int, upstream: str, media_root: Path, nginx: str | None = None
) -> subprocess.Popen:
    """nginx on 127.0.0.1:``port`` with the rendered production server block; checked first."""
    nginx = nginx or ensure_nginx()
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = write_test_nginx_conf(
        run_dir, listen=f"127.0.0.1:{port}", upstream=upstream, media_root=media_root
    )
    nginx_check(nginx, conf, run_dir)
    with open(run_dir / "nginx.out", "ab") as out:
        proc = subprocess.Popen(
            [nginx, "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, proc)
    return proc


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def _wait_ok(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until ``url`` answers 200 (nginx answers 502 while its upstream is not there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


# -- bodies ----------------------------------------------------------------------------------------
def write_file(path: Path, head: bytes, size: int, *, block: int = 4 * MiB) -> Path:
    """A ``size``-byte file starting with ``head`` (a type signature), written in blocks."""
    from support import _filler

    filler = _filler(block, seed=size % 251)
    with open(path, "wb") as out:
        out.write(head)
        left = size - len(head)
        while left > 0:
            out.write(filler[: min(left, block)])
            left -= block
    return path


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def request_head(
    *,
    path: str = "/api/upload",
    content_type: str,
    length: int | None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def poll(predicate, timeout: float = 10.0, interval: float = 0.1):
    """Until ``predicate()`` is truthy (its value) or ``timeout`` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
