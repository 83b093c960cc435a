"""The OpenAPI contract: /openapi.json is a valid OpenAPI 3.1 document of every route, and
schemathesis runs it against a live gateway (gunicorn behind nginx, S3 on moto): for every
generated request, no 5xx, and every answer's status, content type, headers and body as the
document says."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import schemathesis
from flask import Blueprint
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.errors import CATALOGUE
from gateway.http.api.openapi import assemble, descriptions, document
from gateway.http.api.spec import Described

from conftest import make_settings
from e2e_harness import gateway_stack

LOCAL = pytest.mark.parametrize("backend", ["local"])  # /media/{key} is served in embedded mode
SNAPSHOT = Path(__file__).parent / "fixtures" / "openapi.json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _openapi_path(flask_rule: str) -> str:
    """/api/media/<media_id> -> /api/media/{mediaId}; /media/<path:key> -> /media/{key}."""

    def placeholder(match: re.Match[str]) -> str:
        first, *rest = match[1].split("_")
        return "{" + first + "".join(word.title() for word in rest) + "}"

    return re.sub(r"<(?:\w+:)?(\w+)>", placeholder, flask_rule)


def served_operations(app) -> dict[tuple[str, str], str]:
    """(METHOD, path) of every route of the gateway's views, with the module of its view.
    Flask's automatic OPTIONS and the HEAD it adds to a GET are no operations of their own;
    static files and the Swagger UI blueprint are the libraries' routes."""
    served = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("swagger_ui."):
            continue
        methods = set(rule.methods)
        if rule.provide_automatic_options:
            methods.discard("OPTIONS")
        if "GET" in methods:
            methods.discard("HEAD")
        module = app.view_functions[rule.endpoint].__module__
        served.update({(method, _openapi_path(rule.rule)): module for method in methods})
    return served


def route_mismatches(app, described: dict[str, Described]) -> list[str]:
    """Each route described by the module of its view (or declared by it as no operation of its
    own), and each described operation served by a route."""
    owners, left_out = {}, {}
    for owner, part in described.items():
        for path, item in part.paths.items():
            owners.update({(method.upper(), path): owner for method in item})
        left_out.update(dict.fromkeys(part.not_operations, owner))
    served = served_operations(app)
    problems = []
    for (method, path), module in sorted(served.items()):
        owner = owners.get((method, path)) or left_out.get((method, path))
        if owner is None:
            problems.append(f"{method} {path} ({module}) is not described")
        elif owner != module:
            problems.append(f"{method} {path} is served by {module}, described by {owner}")
    problems += [
        f"{owner} describes {method} {path}, which no route serves"
        for (method, path), owner in sorted(owners.items())
        if (method, path) not in served
    ]
    return problems


@pytest.mark.parametrize("metrics_bind", ["", "127.0.0.1:9464"])
def test_every_route_is_described_beside_its_view(tmp_path, metrics_bind):
    # the local store: /media/{key} is a route of it only
    app = create_app(make_settings(tmp_path, backend="local", metrics_bind=metrics_bind))
    assert ("GET", "/api/media/{mediaId}") in served_operations(app)  # the rules were read
    assert (("GET", "/metrics") in served_operations(app)) == bool(metrics_bind)
    assert route_mismatches(app, descriptions()) == []


def test_the_route_check_can_fail(tmp_path):
    app = create_app(make_settings(tmp_path, backend="local"))
    extra = Blueprint("undescribed", __name__)
    extra.add_url_rule("/api/undescribed/<upload_id>", view_func=lambda upload_id: "")
    app.register_blueprint(extra)
    described = descriptions()
    media, stats = described["gateway.http.api.media"], described["gateway.http.api.stats"]
    described["gateway.http.api.media"] = replace(
        media, paths={**media.paths, "/api/media/{mediaId}/gone": {"get": {}}, **stats.paths}
    )
    described["gateway.http.api.stats"] = replace(stats, paths={})
    assert route_mismatches(app, described) == [
        "GET /api/stats is served by gateway.http.api.stats, described by gateway.http.api.media",
        f"GET /api/undescribed/{{uploadId}} ({__name__}) is not described",
        "gateway.http.api.media describes GET /api/media/{mediaId}/gone, which no route serves",
    ]


def test_a_path_or_schema_described_twice_is_refused():
    described = descriptions()
    twice = {**described, "again": Described(paths=described["gateway.http.api.stats"].paths)}
    with pytest.raises(ValueError, match="again describes the path /api/stats again"):
        assemble(twice)
    twice = {**described, "again": Described(schemas={"Media": {}})}
    with pytest.raises(ValueError, match="again describes the schema Media again"):
        assemble(twice)


def test_the_error_codes_are_the_catalogue():
    error = document()["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["properties"]["code"]["enum"] == sorted(CATALOGUE)


def test_the_document_is_the_snapshot():
    """Each resource describes its own routes, openapi.py assembles them: the document is still
    the one the single-function openapi.py built (tests/fixtures/openapi.json, written from it at
    b22980b), equal as JSON. The error codes are compared to the catalogue, not to the snapshot,
    so that a new error does not mean a new snapshot. After a deliberate change to the API, write
    the snapshot anew from the document (sorted keys, indent 1) less that enum."""
    now = json.loads(json.dumps(document()))
    code = now["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert code.pop("enum") == sorted(CATALOGUE)
    assert now == json.loads(SNAPSHOT.read_text())


@LOCAL
def test_the_document_is_valid_openapi_3_1(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(body)  # raises on a document it cannot use
    from jsonschema import Draft202012Validator

    for schema in body["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@LOCAL
def test_the_docs_page_is_served_without_a_cdn(client):
    page = client.get("/docs/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "swagger-ui-bundle.js" in html
    urls = re.findall(r"https?://[^\s\"']+", html)
    assert urls and all(u.startswith("http://localhost/docs/") for u in urls)  # its own origin
    assert 'src="/docs/swagger-ui-bundle.js"' in html
    assert client.get("/docs/swagger-ui-bundle.js").status_code == 200


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory, moto_url):
    with gateway_stack(tmp_path_factory.mktemp("openapi"), mode="s3", moto_url=moto_url) as stack:
        yield stack


# tus chunks are raw bytes: the same serializer as application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@pytest.mark.slow
def test_generated_requests_get_no_5xx_and_answers_as_described(live_stack):
    """Every operation, 25 generated requests each (schemathesis's strategies run by hypothesis
    directly: its pytest plugin does not load under this pytest)."""
    schema = schemathesis.openapi.from_url(live_stack.url + "/openapi.json")
    failures: dict[str, str] = {}
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            case.call_and_validate(headers=live_stack.auth, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # all operations run; failures together
            failures[operation.label] = str(exc)[:3000]
    described = {f"{m.upper()} {path}" for path, ops in document()["paths"].items() for m in ops}
    # schemathesis leaves out the operation its document was loaded from
    assert sorted(labels) == sorted(described - {"GET /openapi.json"})
    assert failures == {}, json.dumps(failures, indent=1)
    assert failures == {}
