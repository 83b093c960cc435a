"""The OpenAPI contract: /openapi.json is a valid OpenAPI 3.1 document of every route, and
schemathesis runs it against a live gateway (gunicorn behind nginx, S3 on moto): for every
generated request, no 5xx, and every answer's status, content type, headers and body as the
document says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.openapi import document
from gateway.errors import CATALOGUE

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


@LOCAL
def test_every_route_of_the_app_is_described(app):
    described = {
        (path, method.upper())
        for path, operations in document()["paths"].items()
        for method in operations
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/docs"):
            continue
        path = rule.rule.replace("<path:key>", "{key}")
        for name in ("media_id", "upload_id"):
            path = path.replace(f"<{name}>", "{mediaId}" if name == "media_id" else "{uploadId}")
        for method in rule.methods - {"OPTIONS", "HEAD"} | (rule.methods & {"OPTIONS", "HEAD"}):
            if method in ("HEAD", "OPTIONS") and not path.startswith("/api/tus/"):
                continue  # Flask's automatic HEAD and OPTIONS: not part of the contract
            if method == "POST" and path == "/api/tus/{uploadId}":
                continue  # X-HTTP-Method-Override, described with the method it stands for
            served.add((path, method))
    assert served - described == set()
    assert described - served == set()


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
