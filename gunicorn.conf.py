"""gunicorn settings for the gateway: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Worker class gevent: an upload holds its connection for as long as the client sends, and slow
clients are the norm for uploads. With gthread each one held one of workers x threads threads:
100 clients sending a byte every 5 s took /healthz down, and more threads only move the limit
(256 per worker: p95 9.7 s with 600 such clients; gevent: 0.2 s). gunicorn 27's gthread also
lingers up to 2 s per closed connection on the worker's main loop, so clients that ignore
their answer stall accepts. Bodies that stall or trickle are ended by the gateway itself
(GATEWAY_BODY_* settings, gateway/http/bodies.py). Measurements in docs/deployment.md.
GATEWAY_WORKER_CLASS=gthread still works (then GATEWAY_THREADS is the concurrency).
"""

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gateway.config import ConfigError, Settings
from gateway.http import shutdown
from gateway.http.serving import install_json_error_pages

# Fail here, in the master, with one line naming the variable: a worker that cannot load the
# app would only be respawned by the master, over and over.
try:
    _settings = Settings.from_env()
except ConfigError as _error:
    print(f"upload-gateway: configuration error: {_error}", file=sys.stderr)
    sys.exit(2)

install_json_error_pages()  # gunicorn's own 400/414/431/501 answers as JSON, not HTML

bind = [os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")]
if _settings.metrics_bind:
    # /metrics answers on this listener only (gateway/http/api/health.py). Every worker writes its
    # samples to a fresh directory that a scrape merges (prometheus-client's multiprocess mode).
    bind.append(_settings.metrics_bind)
    # Set before anything imports prometheus-client (gateway.metrics does, in the workers): it
    # picks its value store from this variable once, at import.
    _metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

    def child_exit(server, worker):
        from gateway.metrics import mark_process_dead

        mark_process_dead(worker.pid)

    def on_exit(server):
        shutil.rmtree(_metrics_dir, ignore_errors=True)


worker_class = os.environ.get("GATEWAY_WORKER_CLASS", "gevent")
# IP literals resolved without a thread handoff (gateway/http/dns.py); gevent reads it in the
# workers.
os.environ.setdefault("GEVENT_RESOLVER", "gateway.http.dns.Resolver")
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count()))
# Concurrent connections per worker (gevent); beyond it a worker stops accepting and the
# connection waits in the listen backlog. An upload holds its connection for as long as the
# client sends, a slow one for minutes; an idle connection costs a greenlet, no buffer. 10,000:
# one worker can hold a whole node's target (10,000 slow uploads, docs/deployment.md) however
# unevenly the workers' accepts fall, so /healthz never waits for a free one (it can still wait
# in the accept queue behind a burst of new uploads: docs/benchmarks.md, "Slow uploads, held").
asked_connections = int(os.environ.get("GATEWAY_WORKER_CONNECTIONS", "10000"))
# Open files per worker: a connection's socket, and for a slow upload the file its part waits in
# (gateway/storage/staging.py); a reserve for the listeners, logs, the S3 connection pool,
# SQLite and gevent's own.
FILES_PER_CONNECTION = 2
FILES_RESERVED = 256


def open_files_needed(connections: int) -> int:
    return connections * FILES_PER_CONNECTION + FILES_RESERVED


def raise_open_files_limit(connections: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (the workers inherit it) to what ``connections``
    need, within the hard limit; the connections per worker that limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = open_files_needed(connections)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft == resource.RLIM_INFINITY:
        return connections
    return min(connections, max(1, (soft - FILES_RESERVED) // FILES_PER_CONNECTION))


# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn, 4096 by default):
# a burst of new uploads waits here while the workers set up the ones before.
backlog = 4096
# gthread only: concurrent requests per worker; each in-flight upload holds one thread.
threads = int(os.environ.get("GATEWAY_THREADS", "32"))
# The worker heartbeat, not a request limit: long uploads are fine.
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", "120"))
# A worker is killed graceful_timeout seconds after its SIGTERM: an upload ended at the end of
# its grace must still have time to roll back (abort its multipart upload, delete its objects).
ROLLBACK_MARGIN = 15
if graceful_timeout < _settings.shutdown_upload_grace + ROLLBACK_MARGIN:
    print(
        "upload-gateway: configuration error: GATEWAY_GRACEFUL_TIMEOUT: must be at least "
        f"GATEWAY_SHUTDOWN_UPLOAD_GRACE + {ROLLBACK_MARGIN} s "
        f"({_settings.shutdown_upload_grace:g} + {ROLLBACK_MARGIN})",
        file=sys.stderr,
    )
    sys.exit(2)

# After the checks above: a configuration error is the only line it prints.
worker_connections = raise_open_files_limit(asked_connections)
if worker_connections < asked_connections:
    # Fewer connections than asked, rather than "Too many open files" in the middle of uploads.
    print(
        f"upload-gateway: the open files limit (RLIMIT_NOFILE, hard "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]}) allows {worker_connections} "
        f"connections per worker, not GATEWAY_WORKER_CONNECTIONS={asked_connections}: raise "
        f"the limit (LimitNOFILE=, docker run --ulimit nofile=; docs/deployment.md)",
        file=sys.stderr,
    )


def when_ready(server):
    """SIGTERM (a deploy): /readyz answers 503 for GATEWAY_SHUTDOWN_DELAY seconds while the
    workers keep serving, then gunicorn's graceful stop; upload bodies end at the upload grace
    (gateway/http/shutdown.py). SIGINT and SIGQUIT still stop at once."""
    stop_gracefully = server.handle_term

    def handle_term():
        shutdown.begin()
        server.log.info(
            "SIGTERM: not ready for %g s, then the listeners close; upload bodies end after %g s",
            _settings.shutdown_delay,
            _settings.shutdown_upload_grace,
        )
        time.sleep(_settings.shutdown_delay)
        stop_gracefully()

    server.handle_term = handle_term


# No keep-alive: a refused upload (401, 413, ...) answers without reading its body, and
# gunicorn would otherwise read and discard that whole body to reuse the connection.
# nginx opens one upstream connection per request anyway.
keepalive = 0
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
control_socket_disable = True  # gunicorn 27's control socket is unused here
accesslog = None  # the app writes one JSON line per request
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
