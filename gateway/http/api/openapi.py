"""The OpenAPI 3.1 description of every route, at ``/openapi.json``; a readable page at ``/docs``.

Each resource describes its own routes at the end of its module (``api_description()``, in the
vocabulary of api/spec.py); this module only assembles them. The error codes come from
``errors.CATALOGUE`` (so a new error is described the moment it is declared). schemathesis runs
the document against a live gateway in the suite (tests/test_openapi.py): no 5xx for any
generated input, every answer as described. The docs page is Swagger UI from the
flask-swagger-ui wheel, served by the gateway itself (no CDN).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify

from gateway.http.api import (
    direct,
    health,
    media,
    pages,
    s3_events,
    session,
    spec,
    stats,
    tickets,
    tus,
    upload,
)
from gateway.http.api.spec import Described, json_response

bp = Blueprint("openapi", __name__)

DOCS_PATH = "/docs"
RESOURCES = (upload, tickets, media, stats, direct, tus, health, session, pages, s3_events)


def descriptions() -> dict[str, Described]:
    """What each module describes, by module name (the owner of each path and schema)."""
    return {
        spec.__name__: spec.shared(),
        **{module.__name__: module.api_description() for module in RESOURCES},
        __name__: api_description(),
    }


def assemble(described: Mapping[str, Described]) -> dict[str, Any]:
    """The document of these descriptions; a path or schema that two modules describe is a
    mistake, not an override."""
    paths: dict[str, spec.PathItem] = {}
    schemas: dict[str, spec.Schema] = {}
    for owner, part in described.items():
        for kind, into, added in (("path", paths, part.paths), ("schema", schemas, part.schemas)):
            for name, value in added.items():
                if name in into:
                    raise ValueError(f"{owner} describes the {kind} {name} again")
                into[name] = value
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "upload-gateway",
            "version": "1",
            "description": "Uploads from forms, scripts, apps and tus clients into S3 (or a "
            "local directory), then scanned and described. Every error answers with the "
            "Error schema and a stable code.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "s3Events": {"type": "http", "scheme": "basic"},
            },
            "schemas": schemas,
        },
        "paths": paths,
    }


@cache
def document() -> dict[str, Any]:
    return assemble(descriptions())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document())


def docs_blueprint() -> Blueprint:
    """Swagger UI at ``/docs``, its files from the flask-swagger-ui wheel (no CDN)."""
    from flask_swagger_ui import get_swaggerui_blueprint

    docs: Blueprint = get_swaggerui_blueprint(
        DOCS_PATH, "/openapi.json", config={"app_name": "upload-gateway"}
    )
    return docs


def api_description() -> Described:
    return Described(
        paths={
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": json_response({"type": "object"}, "OpenAPI 3.1.")},
                }
            }
        }
    )
