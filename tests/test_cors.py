"""CORS for pages on other origins (gateway/http/cors.py, GATEWAY_CORS_ORIGINS): the exact
Access-Control-* answers on every browser API route, nothing for an origin not listed, `*`
without credentials, nothing on /api/session and /api/s3-events."""

from __future__ import annotations

import base64

import pytest

from gateway.app import create_app

from conftest import init_stores, make_settings
from support import form_body, png_bytes

APP = "https://app.example.org"
OTHER = "https://evil.example.net"
ALLOWED_HEADERS = {
    "Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Tus-Resumable",
    "Upload-Offset", "Upload-Length", "Upload-Defer-Length", "Upload-Metadata", "Upload-Concat",
    "Upload-Checksum", "X-HTTP-Method-Override",
}  # fmt: skip
EXPOSED = {
    "Location", "Retry-After", "Idempotent-Replayed", "X-Request-ID", "Upload-Offset",
    "Upload-Length", "Upload-Defer-Length", "Upload-Metadata", "Upload-Concat", "Upload-Expires",
    "Tus-Version", "Tus-Resumable", "Tus-Max-Size", "Tus-Extension", "Tus-Checksum-Algorithm",
}  # fmt: skip


def gateway(tmp_path, origins: tuple[str, ...]):
    app = create_app(make_settings(tmp_path, cors_origins=origins))
    app.config["TESTING"] = True
    init_stores(app.extensions["gateway"])
    from gateway.http.auth import mint_token

    with app.app_context():
        token = mint_token("alice")
    return app.test_client(), {"Authorization": f"Bearer {token}"}


@pytest.fixture
def listed(tmp_path):
    return gateway(tmp_path, (APP, "http://localhost:3000"))


def names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def preflight(client, path: str, method: str, origin: str = APP, headers: str = "authorization"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def upload(client, auth, origin: str | None = APP, **headers: str):
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(4096))])
    sent = {**auth, **({"Origin": origin} if origin else {}), "Content-Type": content_type}
    return client.post("/api/upload", data=body, headers={**sent, **headers})


@pytest.mark.parametrize(
    ("path", "method", "methods"),
    [
        ("/api/upload", "POST", "POST, OPTIONS"),
        ("/api/media/m1", "DELETE", "GET, HEAD, DELETE, OPTIONS"),  # two views, one path
        ("/api/media", "GET", "GET, HEAD, OPTIONS"),
        ("/api/media/m1/events", "GET", "GET, HEAD, OPTIONS"),
        ("/api/tus/", "POST", "POST, OPTIONS"),
        ("/api/tus/u1", "PATCH", "HEAD, POST, PATCH, DELETE, OPTIONS"),
        # (also /api/uploads/<upload_id>, whose GET is a status: the URL map's methods)
        ("/api/uploads/initiate", "POST", "GET, HEAD, POST, OPTIONS"),
        ("/api/tickets", "POST", "POST, OPTIONS"),
    ],
)
def test_a_preflight_from_a_listed_origin_gets_the_paths_methods_and_the_apis_headers(
    listed, path, method, methods
):
    client, _ = listed
    answer = preflight(client, path, method, headers="authorization, idempotency-key")
    assert answer.status_code in (200, 204)
    assert cors_headers(answer) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": answer.headers["Access-Control-Allow-Headers"],
        "Access-Control-Max-Age": "7200",
    }
    assert names(answer.headers["Access-Control-Allow-Headers"]) == ALLOWED_HEADERS
    assert "Origin" in answer.headers["Vary"]


def test_tus_options_keeps_its_protocol_headers_beside_the_preflights(listed):
    client, _ = listed
    answer = preflight(client, "/api/tus/", "POST")
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"


def test_an_upload_from_a_listed_origin_exposes_the_headers_a_client_reads(listed):
    client, auth = listed
    answer = upload(client, auth, **{"Idempotency-Key": "k1"})
    assert answer.status_code == 201
    assert answer.headers["Access-Control-Allow-Origin"] == APP
    assert names(answer.headers["Access-Control-Expose-Headers"]) == EXPOSED
    assert "Access-Control-Allow-Methods" not in answer.headers  # a preflight's, not an answer's
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert "Origin" in answer.headers["Vary"]
    replay = upload(client, auth, **{"Idempotency-Key": "k1"})
    assert replay.headers["Idempotent-Replayed"] == "true"  # readable: exposed
    media_id = answer.get_json()["mediaId"]
    read = client.get(f"/api/media/{media_id}", headers={**auth, "Origin": APP})
    assert (read.status_code, read.headers["Access-Control-Allow-Origin"]) == (200, APP)
    gone = client.delete(f"/api/media/{media_id}", headers={**auth, "Origin": APP})
    assert gone.headers["Access-Control-Allow-Origin"] == APP
    assert gone.status_code < 300


def test_an_error_answer_is_readable_by_a_listed_origin(listed):
    client, _ = listed
    refused = upload(client, {}, Authorization="Bearer nope")
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == APP
    assert names(refused.headers["Access-Control-Expose-Headers"]) == EXPOSED
    missing = client.get("/api/media/none", headers={"Origin": "http://localhost:3000"})
    assert missing.status_code == 401
    assert missing.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_an_origin_not_listed_gets_no_cors_header_at_all(listed):
    client, auth = listed
    for origin in (OTHER, "null", "https://app.example.org.evil.net", "http://app.example.org"):
        assert cors_headers(preflight(client, "/api/upload", "POST", origin=origin)) == {}
        answer = upload(client, auth, origin=origin)
        assert answer.status_code == 201
        assert cors_headers(answer) == {}
        assert "Origin" in answer.headers["Vary"]  # a cache keeps the answers apart
    assert cors_headers(upload(client, auth, origin=None)) == {}  # not a cross-origin request


def test_the_origin_is_compared_without_case(tmp_path):
    client, auth = gateway(tmp_path, ("https://App.Example.org",))
    assert upload(client, auth, origin=APP).headers["Access-Control-Allow-Origin"] == APP


def test_any_origin_is_answered_with_a_star_and_never_with_credentials(tmp_path):
    client, auth = gateway(tmp_path, ("*",))
    answer = upload(client, auth, origin=OTHER, Cookie="__Host-gateway_session=x")
    assert answer.status_code == 201
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers
    flight = preflight(client, "/api/media/m1", "DELETE", origin=OTHER)
    assert flight.headers["Access-Control-Allow-Origin"] == "*"
    assert flight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, DELETE, OPTIONS"
    assert "Access-Control-Allow-Credentials" not in flight.headers


@pytest.mark.parametrize("path", ["/api/session", "/api/s3-events"])
def test_the_cookie_session_and_s3s_notifications_answer_no_cors(listed, path):
    client, auth = listed
    assert cors_headers(preflight(client, path, "POST")) == {}
    assert cors_headers(client.post(path, headers={**auth, "Origin": APP}, json={})) == {}


def test_without_the_setting_no_route_answers_cors(tmp_path):
    client, auth = gateway(tmp_path, ())
    assert cors_headers(upload(client, auth)) == {}
    flight = preflight(client, "/api/tus/", "POST")
    assert flight.status_code == 204  # tus's own OPTIONS still answers
    assert cors_headers(flight) == {}
    assert "Origin" not in flight.headers.get("Vary", "")


def test_a_tus_creation_from_a_listed_origin_exposes_its_location(listed):
    client, auth = listed
    metadata = "projectId " + base64.b64encode(b"p1").decode()
    created = client.post(
        "/api/tus/",
        headers={
            **auth,
            "Origin": APP,
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "10",
            "Upload-Metadata": metadata,
        },
    )
    assert created.status_code == 201
    assert created.headers["Access-Control-Allow-Origin"] == APP
    assert {"Location", "Upload-Offset", "Upload-Expires"} <= names(
        created.headers["Access-Control-Expose-Headers"]
    )
