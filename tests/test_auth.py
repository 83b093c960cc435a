"""Auth comes first: every bad token is refused before one body byte is read or S3 is called."""

from __future__ import annotations

import io
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import create_app
from gateway.uploads.csrf import FORM_WINDOW_BYTES

from conftest import init_stores, make_settings
from support import JWT_SECRET, assert_nothing_left, form_body, png_bytes, record_s3_calls

pytestmark = pytest.mark.slow  # a moto server: "no S3 call" is counted on a real client


@pytest.fixture
def backend():
    return "s3"


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.bytes_read += count
        return count


def s3_calls(svc) -> list:
    return record_s3_calls(svc)


def upload_with(client, headers, body_size=5 * 1024 * 1024, query="?projectId=p1"):
    body, content_type = form_body([], [("file", "a.png", png_bytes(body_size))])
    stream = CountingStream(body)
    response = client.post(
        f"/api/upload{query}",
        input_stream=stream,
        headers={"Content-Type": content_type, "Content-Length": str(len(body)), **headers},
    )
    return response, stream


def claims(**extra):
    now = int(time.time())
    # A day: the cases are signed at collection, and a loaded suite can take more than minutes.
    return {"sub": "alice", "iat": now, "exp": now + 86_400, **extra}


def good(**extra):
    """Claims that pass every check of hs_app but the one a case breaks."""
    return claims(aud="gateway", iss="issuer-1", **extra)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
RSA_PUBLIC = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def _none_token():
    return jwt.encode(good(), key="", algorithm="none")


HS_CASES = {
    "no token": ({}, "missing_token"),
    "not bearer": ({"Authorization": "Basic YWxpY2U6cHc="}, "missing_token"),
    "malformed": ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"),
    "garbage": ({"Authorization": "Bearer %%%"}, "invalid_token"),
    "wrong secret": (
        {"Authorization": "Bearer " + jwt.encode(good(), "x" * 40, "HS256")},
        "invalid_token",
    ),
    "expired": (
        {
            "Authorization": "Bearer "
            + jwt.encode(good(exp=int(time.time()) - 3600), JWT_SECRET, "HS256")
        },
        "token_expired",
    ),
    "not yet valid": (
        {
            "Authorization": "Bearer "
            + jwt.encode(good(nbf=int(time.time()) + 3600), JWT_SECRET, "HS256")
        },
        "invalid_token",
    ),
    "no exp": (
        {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "alice", "aud": "gateway", "iss": "issuer-1"}, JWT_SECRET, "HS256")
        },
        "invalid_token",
    ),
    "alg none": ({"Authorization": "Bearer " + _none_token()}, "invalid_token"),
    "RS256 when HS256 configured": (
        {"Authorization": "Bearer " + jwt.encode(good(), RSA_PRIVATE, "RS256")},
        "invalid_token",
    ),
    "HS512 (another algorithm)": (
        {"Authorization": "Bearer " + jwt.encode(good(), JWT_SECRET + "x" * 20, "HS512")},
        "invalid_token",
    ),
    "wrong audience": (
        {
            "Authorization": "Bearer "
            + jwt.encode(claims(aud="other", iss="issuer-1"), JWT_SECRET, "HS256")
        },
        "invalid_token",
    ),
    "wrong issuer": (
        {
            "Authorization": "Bearer "
            + jwt.encode(claims(aud="gateway", iss="evil"), JWT_SECRET, "HS256")
        },
        "invalid_token",
    ),
    "bad projects claim": (
        {
            "Authorization": "Bearer "
            + jwt.encode(claims(aud="gateway", iss="issuer-1", projects="p1"), JWT_SECRET, "HS256")
        },
        "invalid_token",
    ),
}


@pytest.fixture
def hs_app(tmp_path, moto_url):
    app = create_app(
        make_settings(
            tmp_path, backend="s3", moto_url=moto_url, jwt_audience="gateway", jwt_issuer="issuer-1"
        )
    )
    init_stores(app.extensions["gateway"])
    return app


@pytest.mark.parametrize("case", list(HS_CASES))
def test_bad_tokens_are_refused_before_reading_or_s3(hs_app, case):
    headers, code = HS_CASES[case]
    svc = hs_app.extensions["gateway"]
    calls = s3_calls(svc)
    response, stream = upload_with(hs_app.test_client(), headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["success"] is False and body["error"]["code"] == code
    assert body["requestId"] == response.headers["X-Request-ID"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # A post without an Authorization header may carry an upload ticket: its form is read up to
    # the ticket's window, never further (docs/tickets.md); a presented token is judged unread.
    assert stream.bytes_read == (FORM_WINDOW_BYTES if "Authorization" not in headers else 0)
    assert calls == []
    assert_nothing_left(svc)


def test_a_valid_token_with_audience_and_issuer_is_accepted(hs_app):
    token = jwt.encode(claims(aud="gateway", iss="issuer-1"), JWT_SECRET, "HS256")
    response, stream = upload_with(
        hs_app.test_client(), {"Authorization": f"Bearer {token}"}, body_size=10_000
    )
    assert response.status_code == 201, response.get_json()
    assert stream.bytes_read > 0


@pytest.mark.parametrize("where", ["query", "cookie"])
def test_token_outside_the_authorization_header_is_ignored(hs_app, where):
    token = jwt.encode(claims(aud="gateway", iss="issuer-1"), JWT_SECRET, "HS256")
    client = hs_app.test_client()
    if where == "cookie":
        client.set_cookie("access_token_cookie", token)
        response, _ = upload_with(client, {})
    else:
        response, _ = upload_with(client, {}, query=f"?projectId=p1&jwt={token}")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"
    assert_nothing_left(hs_app.extensions["gateway"])


@pytest.fixture
def rs_app(tmp_path, moto_url):
    app = create_app(
        make_settings(
            tmp_path,
            backend="s3",
            moto_url=moto_url,
            jwt_secret="",
            jwt_public_key=RSA_PUBLIC,
            jwt_private_key=RSA_PRIVATE,
        )
    )
    init_stores(app.extensions["gateway"])
    return app


def test_rs256_token_is_accepted(rs_app):
    token = jwt.encode(claims(), RSA_PRIVATE, "RS256")
    response, _ = upload_with(
        rs_app.test_client(), {"Authorization": f"Bearer {token}"}, body_size=10_000
    )
    assert response.status_code == 201, response.get_json()


def test_algorithm_confusion_is_refused(rs_app):
    """HS256 tokens keyed with the RSA public key, or with the app's own secret key."""
    svc = rs_app.extensions["gateway"]
    calls = s3_calls(svc)
    import base64
    import hashlib
    import hmac
    import json as _json

    def hs256_with(key: bytes) -> str:  # PyJWT refuses to sign with a PEM key: do it by hand
        enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
        signing_input = (
            enc(_json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            + b"."
            + enc(_json.dumps(claims()).encode())
        )
        return (
            signing_input + b"." + enc(hmac.new(key, signing_input, hashlib.sha256).digest())
        ).decode()

    assert rs_app.config["SECRET_KEY"] is None  # no Flask key a token could be checked against
    for token in (
        hs256_with(RSA_PUBLIC.encode()),
        hs256_with(b""),
        jwt.encode(claims(), JWT_SECRET, "HS256"),
    ):
        response, stream = upload_with(rs_app.test_client(), {"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "invalid_token"
        assert stream.bytes_read == 0
    assert calls == []
    assert_nothing_left(svc)


def test_projects_claim_limits_the_project(client, token, svc):
    headers = {"Authorization": f"Bearer {token(projects=['p1'])}"}
    calls = s3_calls(svc)
    response, stream = upload_with(client, headers, query="?projectId=p2")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "project_forbidden"
    assert stream.bytes_read == 0 and calls == []
    # The same project named as a form field: refused before any S3 call.
    body, content_type = form_body([("projectId", "p2")], [("file", "a.png", png_bytes(10_000))])
    response = client.post(
        "/api/upload", data=body, headers={"Content-Type": content_type, **headers}
    )
    assert response.status_code == 403 and calls == []
    assert_nothing_left(svc)


def test_tenant_scopes_keys_and_visibility(client, token, svc):
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(10_000))])
    acme = {"Authorization": f"Bearer {token(tenant='acme')}"}
    response = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **acme})
    assert response.status_code == 201
    media = response.get_json()
    assert media["s3Key"] == f"uploads/acme/projects/p1/media/{media['mediaId']}.png"
    other = {"Authorization": f"Bearer {token(tenant='globex')}"}
    assert client.get(f"/api/media/{media['mediaId']}", headers=other).status_code == 404
    assert client.get("/api/media?projectId=p1", headers=other).get_json()["items"] == []
    assert client.delete(f"/api/media/{media['mediaId']}", headers=other).status_code == 404
    assert client.get(f"/api/media/{media['mediaId']}", headers=acme).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"projects": None},
        {"projects": "p1"},
        {"projects": [1]},
        {"projects": {"p1": True}},
        {"tenant": False},
        {"tenant": 0},
        {"tenant": {}},
        {"tenant": None},
        {"tenant": ""},
        {"tenant": "acme\n"},
        {"tenant": "a/b"},
        {"tenant": "-acme"},
        {"tenant": "x" * 65},
        {"admin": "yes"},
        {"admin": 1},
        {"admin": None},
        {"sub": ""},
        {"sub": 7},
    ],
)
def test_claims_of_the_wrong_type_fail_closed(client, svc, bad):
    calls = s3_calls(svc)
    token = jwt.encode({**claims(), **bad}, JWT_SECRET, "HS256")
    response, stream = upload_with(client, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, (bad, response.get_json())
    assert response.get_json()["error"]["code"] == "invalid_token"
    assert stream.bytes_read == 0 and calls == []
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "good_claims",
    [
        {"tenant": "acme"},
        {"projects": []},
        {"admin": True},
        {"admin": False},
        {"tenant": "A" + "x" * 63},
    ],
)
def test_claims_of_the_right_type_are_accepted(client, good_claims):
    token = jwt.encode({**claims(), **good_claims}, JWT_SECRET, "HS256")
    response, _ = upload_with(client, {"Authorization": f"Bearer {token}"}, body_size=10_000)
    expected = 403 if good_claims == {"projects": []} else 201
    assert response.status_code == expected, response.get_json()


def test_the_token_command_mints_a_usable_token(app, client):
    result = app.test_cli_runner().invoke(
        args=["token", "--sub", "bob", "--tenant", "t1", "--projects", "a,b", "--ttl", "5m"]
    )
    assert result.exit_code == 0, result.output
    decoded = jwt.decode(result.output.strip(), JWT_SECRET, algorithms=["HS256"])
    assert (
        decoded["sub"] == "bob" and decoded["tenant"] == "t1" and decoded["projects"] == ["a", "b"]
    )
    assert 0 < decoded["exp"] - time.time() <= 300
