from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import GatewayError
from ..services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks, ready = {}, True
    for name, component in (("objectStore", services().store), ("recordStore", services().records)):
        try:
            component.check()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name], ready = exc.message, False
    return jsonify(ready=ready, checks=checks), 200 if ready else 503
