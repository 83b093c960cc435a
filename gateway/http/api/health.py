"""Liveness, readiness, and the Prometheus metrics (on the metrics listener only)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gateway import metrics
from gateway.errors import GatewayError
from gateway.http import shutdown
from gateway.http.api import services
from gateway.http.api.spec import Described, json_response

bp = Blueprint("health", __name__)
metrics_bp = Blueprint("metrics", __name__)  # registered when GATEWAY_METRICS_BIND is set


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks, ready = {}, True
    if shutdown.stopping():  # first, so that a load balancer stops sending requests here
        checks["shutdown"], ready = "stopping: finishing the requests in flight", False
    svc = services()
    for name, check in (("objectStore", svc.store.check), ("recordStore", svc.records.check)):
        try:
            check()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name], ready = exc.message, False
    return jsonify(ready=ready, checks=checks), 200 if ready else 503


@metrics_bp.get("/metrics")
def scrape() -> Response:
    svc = services()
    queue = [metrics.QueueCollector(svc.queue.stats)] if svc.settings.processing else []
    return Response(metrics.scrape(queue), content_type=metrics.CONTENT_TYPE)


def api_description() -> Described:
    readiness = {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object"}},
    }
    return Described(
        paths={
            "/healthz": {
                "get": {
                    "summary": "Alive",
                    "responses": {
                        "200": json_response(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "ok"}},
                            },
                            "Alive.",
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Ready: object store and record store reachable, not stopping",
                    "responses": {
                        "200": json_response(readiness, "Ready."),
                        "503": json_response(readiness, "Not ready."),
                    },
                }
            },
        },
        not_operations=frozenset({("GET", "/metrics")}),  # the metrics listener's, not the API's
    )
