"""A graceful stop (a deploy's SIGTERM): refuse readiness first, then let uploads finish or end
them cleanly, before anything is killed.

On SIGTERM the gunicorn master (gunicorn.conf.py) marks the stop here and waits
``GATEWAY_SHUTDOWN_DELAY`` seconds while its workers keep serving, with ``/readyz`` answering 503,
so that a load balancer stops sending new requests. Then gunicorn's own graceful stop begins: the
listeners close and the requests in flight go on. An upload body still arriving
``GATEWAY_SHUTDOWN_UPLOAD_GRACE`` seconds after the SIGTERM is ended by the body reader with 503
``shutting_down`` (``Retry-After``): the protocol rolls back what it started, as for any failed
upload, and the client gets a complete answer. gunicorn's ``GATEWAY_GRACEFUL_TIMEOUT`` must leave
time for that rollback before it kills a worker (gunicorn.conf.py refuses to start otherwise).

The mark lives in anonymous shared memory created when this module is first imported, which
gunicorn.conf.py does in the master before any worker is forked, so every worker sees it. Times
are ``time.monotonic()``, one clock for every process on the machine. Outside gunicorn nothing
ever marks a stop.
"""

from __future__ import annotations

import multiprocessing
import time

_stopping_since = multiprocessing.Value("d", 0.0, lock=False)  # 0.0: not stopping


def begin(now: float | None = None) -> None:
    """The process group is stopping (called once, by the master, on SIGTERM)."""
    if not _stopping_since.value:
        _stopping_since.value = time.monotonic() if now is None else now


def stopping() -> bool:
    return bool(_stopping_since.value)


def uploads_end_at(grace: float) -> float | None:
    """The monotonic time after which upload bodies are ended, when a stop has begun."""
    since = _stopping_since.value
    return since + grace if since else None


def reset() -> None:
    """For tests in one process: no stop."""
    _stopping_since.value = 0.0
