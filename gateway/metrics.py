"""Prometheus metrics: every metric the gateway and the worker export, defined once, and the scrape.

Under gunicorn the workers are separate processes, so the metrics use prometheus-client's
multiprocess mode: gunicorn.conf.py points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before any worker imports this module, each worker writes its samples there, and a scrape (in
whichever worker takes it) merges them. The processing worker (``flask worker``) is one process
and serves its own registry on its own bind. Queue depth is read from the queue at scrape time.

Nothing here imports Flask; the HTTP edge and the domain call the small functions below.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from http import HTTPMethod
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Request and upload durations span 1 ms (a health check) to many minutes (a 5 GiB upload).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600,
)  # fmt: skip
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUEST_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "HTTP requests by route template, method and status, from the first byte of the request "
    "to the answer.",
    ["method", "route", "status"],
    buckets=DURATION_BUCKETS,
)
REJECTIONS = Counter(
    "gateway_rejections_total",
    "Requests answered with an error, by the error code of the JSON answer.",
    ["code", "status"],
)
UPLOADS = Counter(
    "gateway_uploads_total",
    "Upload requests by protocol (form, tus, direct) and outcome: stored, replayed, partial "
    "(a tus PATCH that did not finish its upload), initiated (direct), or the error code.",
    ["protocol", "outcome"],
)
UPLOAD_BYTES = Counter(
    "gateway_upload_bytes_total",
    "Upload body bytes the gateway received (form: the whole multipart body; tus: PATCH "
    "bodies) or, for direct uploads, the object size committed on complete.",
    ["protocol", "outcome"],
)
UPLOAD_DURATION = Histogram(
    "gateway_upload_duration_seconds",
    "Time from the start of an upload to its commit: one request for form uploads, creation "
    "to the last PATCH for tus, initiate to complete for direct uploads.",
    ["protocol"],
    buckets=DURATION_BUCKETS,
)
UPLOADS_IN_FLIGHT = Gauge(
    "gateway_uploads_in_flight",
    "Requests whose body is being received (form uploads, tus PATCHes).",
    ["protocol"],
    multiprocess_mode="livesum",
)
BODY_READ_WAITS = Counter(
    "gateway_body_read_waits_total",
    "Body reads that waited for room in the memory budget (GATEWAY_MEMORY_BUDGET): back-pressure.",
)
BODY_MEMORY_PEAK = Gauge(
    "gateway_body_memory_peak_bytes",
    "The most bytes a worker held at once for bodies in flight (read and part buffers), of its "
    "share of GATEWAY_MEMORY_BUDGET.",
    multiprocess_mode="max",
)
STAGED_BYTES = Gauge(
    "gateway_staged_bytes",
    "Bytes of slow uploads' parts waiting in the staging directory (GATEWAY_STAGING_DIR).",
    multiprocess_mode="livesum",
)
S3_CALL_DURATION = Histogram(
    "gateway_s3_call_duration_seconds",
    "S3 API calls by operation, retries included.",
    ["operation"],
    buckets=CALL_BUCKETS,
)
S3_CALL_ERRORS = Counter(
    "gateway_s3_call_errors_total",
    "S3 API calls that failed after botocore's retries, by operation and error code.",
    ["operation", "code"],
)
RECORD_CALL_DURATION = Histogram(
    "gateway_record_store_call_duration_seconds",
    "Record store calls (SQLite or DynamoDB) by backend and method.",
    ["backend", "operation"],
    buckets=CALL_BUCKETS,
)
RECORD_CALL_ERRORS = Counter(
    "gateway_record_store_call_errors_total",
    "Record store calls that raised, by backend, method and error.",
    ["backend", "operation", "error"],
)
JOBS = Counter(
    "gateway_jobs_total",
    "Queue jobs handled by the worker, by message type and outcome (done, retry, dead).",
    ["type", "outcome"],
)
JOB_DURATION = Histogram(
    "gateway_job_duration_seconds",
    "Queue jobs by message type, from receive to the outcome.",
    ["type"],
    buckets=DURATION_BUCKETS,
)
STAGE_DURATION = Histogram(
    "gateway_processing_stage_duration_seconds",
    "Processing stages (scan, describe) by outcome (ok or the exception's class).",
    ["stage", "outcome"],
    buckets=DURATION_BUCKETS,
)


# Label values must come from a fixed set, never from the client's text: each new value is a new
# series for as long as the process lives (2,000 requests with made-up methods once grew a scrape
# from 144 KB to 4.4 MB). The client chooses the method and the path; the route is the matched
# rule's template, or this one value when no rule matched.
KNOWN_METHODS: frozenset[str] = frozenset(HTTPMethod)
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"


def method_label(method: str) -> str:
    """The request method as a label: one of RFC 9110's (and PATCH), or ``other``."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def observe_request(method: str, route: str, status: int, seconds: float, code: str) -> None:
    """``route``: the matched rule's template, or ``UNMATCHED_ROUTE``; ``code``: the error code
    of the answer (from the error catalogue) or a fixed outcome."""
    REQUEST_DURATION.labels(method_label(method), route, str(status)).observe(seconds)
    if status >= 400:
        REJECTIONS.labels(code or "unknown", str(status)).inc()


def observe_upload(protocol: str, outcome: str, size: int, seconds: float | None) -> None:
    UPLOADS.labels(protocol, outcome).inc()
    if size:
        UPLOAD_BYTES.labels(protocol, outcome).inc(size)
    if seconds is not None:
        UPLOAD_DURATION.labels(protocol).observe(seconds)


@contextmanager
def upload_in_flight(protocol: str) -> Iterator[None]:
    gauge = UPLOADS_IN_FLIGHT.labels(protocol)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


@contextmanager
def stage(name: str) -> Iterator[None]:
    started, outcome = time.monotonic(), "ok"
    try:
        yield
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        STAGE_DURATION.labels(name, outcome).observe(time.monotonic() - started)


def observe_job(kind: str, outcome: str, seconds: float) -> None:
    JOBS.labels(kind, outcome).inc()
    JOB_DURATION.labels(kind).observe(seconds)


# -- S3: botocore's event hooks time every API call of a client -------------------------------
_STARTED = "gateway_metrics_started"


def instrument_s3_client(client: Any) -> None:
    """Time every call ``client`` makes (one registration per client, not per call)."""
    events = client.meta.events
    events.register_first("before-call.s3", _before_s3_call)  # before any handler that answers
    events.register("after-call.s3", _after_s3_call)
    events.register("after-call-error.s3", _after_s3_call_error)


def _before_s3_call(context: dict[str, Any], **_: Any) -> None:
    context[_STARTED] = time.monotonic()


def _after_s3_call(
    model: Any, context: dict[str, Any], http_response: Any = None, parsed: Any = None, **_: Any
) -> None:
    started = context.pop(_STARTED, None)
    if started is None:
        return
    S3_CALL_DURATION.labels(model.name).observe(time.monotonic() - started)
    if http_response is None:  # no answer object: nothing to count as an error
        return
    status = http_response.status_code
    if status >= 300 and status != 304:
        code = (parsed or {}).get("Error", {}).get("Code") or str(status)
        S3_CALL_ERRORS.labels(model.name, code).inc()


def _after_s3_call_error(
    context: dict[str, Any], exception: BaseException, event_name: str = "", **_: Any
) -> None:
    # botocore passes no model here: the operation is the last part of the event's name
    # ("after-call-error.s3.PutObject").
    name = event_name.rpartition(".")[2] or "unknown"
    started = context.pop(_STARTED, None)
    if started is not None:
        S3_CALL_DURATION.labels(name).observe(time.monotonic() - started)
    S3_CALL_ERRORS.labels(name, type(exception).__name__).inc()


# -- record stores: every public method of the store object is timed ---------------------------
Store = TypeVar("Store")


def instrument_record_store(store: Store, backend: str) -> Store:
    """Wrap the public methods of ``store`` (on this instance) with timing and error counting."""
    for name in dir(type(store)):
        if name.startswith("_") or isinstance(getattr(type(store), name, None), property):
            continue
        method = getattr(store, name, None)
        if inspect.ismethod(method):
            setattr(store, name, _timed(method, backend, name))
    return store


def _timed(method: Callable[..., Any], backend: str, operation: str) -> Callable[..., Any]:
    duration = RECORD_CALL_DURATION.labels(backend, operation)

    @wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            error = getattr(exc, "code", None)
            RECORD_CALL_ERRORS.labels(
                backend, operation, error if isinstance(error, str) else type(exc).__name__
            ).inc()
            raise
        finally:
            duration.observe(time.monotonic() - started)

    return call


# -- the scrape ------------------------------------------------------------------------------------
class QueueCollector(Collector):
    """Queue depth, jobs in flight, dead letters and the oldest waiting job's age, read at scrape
    time from ``stats`` (a ``Queue.stats``); a failing read is exported as ``up`` 0."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("gateway_queue_up", "1 when the queue answered this scrape.")
        try:
            stats = self.stats()
        except Exception:  # noqa: BLE001 - a scrape must answer; the failure is the sample
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "gateway_queue_messages", "Jobs waiting to be received.", value=stats.visible
        )
        yield GaugeMetricFamily(
            "gateway_queue_in_flight_messages",
            "Jobs received by a worker and not yet done.",
            value=stats.in_flight,
        )
        yield GaugeMetricFamily(
            "gateway_queue_dead_letter_messages",
            "Jobs that failed on their last delivery (see `flask queue redrive`).",
            value=stats.dead,
        )
        if stats.oldest_age is not None:  # SQS reports it to CloudWatch only
            yield GaugeMetricFamily(
                "gateway_queue_oldest_message_age_seconds",
                "Age of the oldest waiting job (SQLite queue only).",
                value=stats.oldest_age,
            )


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR_ENV))


def scrape(extra: Sequence[Collector] = ()) -> bytes:
    """The exposition: this process's metrics, or every gunicorn worker's in multiprocess mode."""
    registry = CollectorRegistry()
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


def serve(host: str, port: int, *collectors: Collector) -> None:
    """This process's metrics (and ``collectors``) at http://host:port/metrics, from a thread."""
    for collector in collectors:
        REGISTRY.register(collector)
    start_http_server(port, addr=host)


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit: a dead worker's live gauges stop counting."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
