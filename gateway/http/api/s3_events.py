"""POST /api/s3-events: bucket notifications pushed over HTTP (a Ceph RGW topic's push endpoint),
authenticated by GATEWAY_S3_EVENTS_SECRET as the HTTP Basic password. An event naming direct
uploads' staging objects goes to the processing queue, where the worker checks each as
``complete`` does (gateway/uploads/s3_events.py). 404 while no secret is set."""

from __future__ import annotations

import base64
import binascii
import hmac

from flask import Blueprint, Response, jsonify, request

from gateway import errors
from gateway.http.api import json_body, services
from gateway.http.api.spec import ERROR_RESPONSES, Described, json_response
from gateway.http.weblog import note
from gateway.uploads.s3_events import MalformedEvent

bp = Blueprint("s3_events", __name__)


@bp.post("/api/s3-events")
def receive() -> tuple[Response, int]:
    svc = services()
    secret = svc.settings.s3_events_secret
    if not secret:
        raise errors.NotFound()
    if not _basic_password_is(secret):
        raise errors.EventSecretInvalid()
    body = json_body(required=True, any_type=True)
    try:
        arrived = svc.events.receive(body)
    except MalformedEvent as exc:
        raise errors.InvalidEvent(f"The body is not an S3 event notification: {exc}") from None
    note(arrivals=len(arrived))
    return jsonify(success=True, arrivals=arrived), 200


def _basic_password_is(secret: str) -> bool:
    """Whether the request's HTTP Basic password is ``secret`` (compared in constant time; the
    user name is not looked at). The header is parsed here, not by werkzeug, which accepts a
    password it could not decode as an empty one."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _, colon, password = decoded.partition(b":")
    return bool(colon) and hmac.compare_digest(password, secret.encode())


def api_description() -> Described:
    answer = {
        "type": "object",
        "required": ["success", "arrivals"],
        "properties": {
            "success": {"const": True},
            "arrivals": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The direct uploads (mediaId) whose staging objects the event "
                "names: queued to be checked as complete checks them.",
            },
        },
    }
    return Described(
        paths={
            "/api/s3-events": {
                "post": {
                    "summary": "Bucket notifications pushed by the object store",
                    "description": 'An S3 event notification ({"Records": [...]}) as a Ceph '
                    "RGW topic's HTTP push endpoint sends it, whatever its Content-Type; "
                    "authenticated by GATEWAY_S3_EVENTS_SECRET as the HTTP Basic password "
                    "(docs/deployment.md). 404 while no secret is set.",
                    "security": [{"s3Events": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": json_response(answer, "Received (queued when it names uploads)."),
                        **ERROR_RESPONSES,
                    },
                }
            }
        }
    )
