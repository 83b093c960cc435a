"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..errors import GatewayError
from . import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks, ready = {}, True
    svc = services()
    for name, check in (("objectStore", svc.store.check), ("recordStore", svc.records.check)):
        try:
            check()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name], ready = exc.message, False
    return jsonify(ready=ready, checks=checks), 200 if ready else 503
