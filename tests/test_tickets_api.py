"""Upload tickets through the app (the Flask test client): POST /api/tickets, and form posts
that carry a ticket instead of a token or session, answered as JSON for scripts and with 303s
and pages for browsers. Every refusal is an exact answer that leaves nothing behind (object,
multipart upload, record, reservation), and the signing examples of docs/tickets.md are run.
(The ticket module alone: test_tickets.py; through nginx and Chromium: test_tickets_e2e.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from urllib.parse import parse_qsl, urlparse

import jwt
import pytest

from gateway import create_app
from gateway.uploads import csrf
from gateway.uploads import tickets as tk

from conftest import init_stores, make_settings
from support import (
    JWT_SECRET,
    ROOT,
    MiB,
    assert_nothing_left,
    assert_stored,
    form_body,
    jpeg_bytes,
    leftovers,
    mp4_bytes,
    png_bytes,
    record_s3_calls,
)

TICKET_SECRET = "ticket-secret-" + "t" * 40
ACME_SECRET = "acme-ticket-secret-" + "a" * 40
PARTNER = "https://partner.example.org"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
BOUNDARY = "----gatewaytestboundary7MA4YWxkTrZu0gW"
NODE = shutil.which("node")


@pytest.fixture(params=["local"])
def backend(request):
    return request.param


@pytest.fixture
def settings(tmp_path, backend, request):
    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    return make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto,
        ticket_secret=TICKET_SECRET,
        ticket_tenant_keys=("acme:" + ACME_SECRET,),
        redirect_origins=("https://forms.example.org",),
        allowed_types=("image/*", "video/*"),
        s3_part_size=5 * MiB,
    )


@pytest.fixture
def client(app):
    return app.test_client(use_cookies=False)


def issue(client, token, **body):
    return client.post(
        "/api/tickets",
        json={"projectId": "p1", **body},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def ticket(client, token):
    """``ticket(**request)``: a ticket POST /api/tickets issued to alice (projects p1, p2)."""

    def make(**body) -> str:
        answer = issue(client, token(projects=["p1", "p2"]), **body)
        assert answer.status_code == 201, answer.get_json()
        return answer.get_json()["ticket"]

    return make


def signed(*, key: str = TICKET_SECRET, kid: str | None = None, **changes) -> str:
    """A ticket an application signed itself."""
    now = int(time.time())
    claims = {
        "aud": tk.AUDIENCE,
        "sub": "partner-user",
        "project": "p1",
        "jti": f"jti-{time.monotonic_ns()}",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid} if kid else None)


def post(
    client,
    ticket_value,
    files=(("file", "a.png", png_bytes(5000)),),
    *,
    fields=(),
    headers=None,
    query="",
):
    """A form post as a browser builds it: the ticket first, then the fields, then the files."""
    before = [] if ticket_value is None else [("ticket", ticket_value)]
    body, content_type = form_body([*before, *fields], files)
    return client.post(
        f"/api/upload{query}", data=body, headers={"Content-Type": content_type, **(headers or {})}
    )


def code_of(answer) -> str:
    if answer.mimetype == "text/html":
        return re.search(r'data-code="([a-z_]+)"', answer.get_data(as_text=True)).group(1)
    body = answer.get_json()
    assert body["success"] is False
    return body["error"]["code"]


def refused(answer, status: int, code: str) -> None:
    assert (answer.status_code, code_of(answer)) == (status, code), answer.get_data(as_text=True)


# -- POST /api/tickets ----------------------------------------------------------------------------
def test_a_backend_gets_a_ticket_for_its_own_subject_tenant_and_project(client, token, settings):
    answer = issue(
        client,
        token("portal", tenant="acme", projects=["p1"]),
        maxFiles=2,
        maxFileBytes=4096,
        types=["image/png"],
        redirect=PARTNER + "/done",
        fields={"source": "portal"},
        expiresIn=900,
    )
    assert answer.status_code == 201
    body = answer.get_json()
    assert set(body) == {"success", "ticket", "field", "ticketId", "expiresAt"}
    assert body["success"] is True and body["field"] == "ticket" == tk.FORM_FIELD
    claims = jwt.decode(
        body["ticket"], TICKET_SECRET, algorithms=["HS256"], audience="upload-gateway:ticket"
    )
    assert claims["sub"] == "portal" and claims["tenant"] == "acme" and claims["project"] == "p1"
    assert claims["jti"] == body["ticketId"] and claims["exp"] - claims["iat"] == 900
    assert claims["maxFiles"] == 2 and claims["fields"] == {"source": "portal"}
    expires = body["expiresAt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", expires)
    assert datetime.fromisoformat(expires).timestamp() == claims["exp"]


def test_issuing_needs_a_bearer_token(client, ticket):
    refused(client.post("/api/tickets", json={"projectId": "p1"}), 401, "missing_token")
    as_bearer = {"Authorization": f"Bearer {ticket()}"}
    refused(
        client.post("/api/tickets", json={"projectId": "p1"}, headers=as_bearer),
        401,
        "invalid_token",
    )


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"projectId": "p3"}, 403, "project_forbidden"),
        ({"projectId": "../p1"}, 400, "invalid_project_id"),
        ({"projectId": 5}, 400, "invalid_project_id"),
        ({}, 400, "missing_project_id"),
        ({"projectId": "p1", "tenant": "globex"}, 403, "ticket_tenant"),
        ({"projectId": "p1", "maxfiles": 2}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "maxFiles": "2"}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "maxFiles": True}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "maxBytes": 1.5}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "maxFiles": 11}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "expiresIn": 3601}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "types": "image/*"}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "types": [1]}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "types": ["application/pdf"]}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "redirect": 7}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "redirect": "javascript:x"}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "redirectOrigins": ["x"]}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "fields": ["a"]}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "fields": {"a": 1}}, 400, "invalid_ticket_request"),
        ({"projectId": "p1", "fields": {"redirect": "/x"}}, 400, "invalid_ticket_request"),
    ],
)
def test_a_request_that_is_not_valid_is_refused(client, token, body, status, code):
    answer = client.post(
        "/api/tickets",
        json=body,
        headers={"Authorization": f"Bearer {token(tenant='acme', projects=['p1'])}"},
    )
    refused(answer, status, code)


def test_a_body_that_is_not_a_json_object_is_refused(client, token):
    auth = {"Authorization": f"Bearer {token()}"}
    for data, kind in (
        (b"[1]", "application/json"),
        (b"{", "application/json"),
        (b'{"projectId": "p1"}', "text/plain"),
    ):
        answer = client.post("/api/tickets", data=data, headers={**auth, "Content-Type": kind})
        refused(answer, 400, "invalid_json")


def test_issuing_with_every_limit_at_the_gateways_bound(client, ticket, settings):
    value = ticket(
        maxFiles=settings.max_files,
        maxFileBytes=settings.max_upload_bytes,
        maxBytes=settings.max_upload_bytes,
        expiresIn=3600,
        types=["image/*"],
        redirectOrigins=[PARTNER],
        tenant="",
    )
    claims = jwt.decode(value, TICKET_SECRET, algorithms=["HS256"], audience=tk.AUDIENCE)
    assert claims["maxFiles"] == 10 and claims["exp"] - claims["iat"] == 3600
    assert "tenant" not in claims  # alice has none


# -- a ticket's post ------------------------------------------------------------------------------
def test_a_ticket_post_needs_no_token_no_cookie_no_csrf_and_stores_as_the_tickets_subject(
    client, token, svc
):
    value = issue(
        client, token("portal", tenant="acme", projects=["p1"]), fields={"source": "portal"}
    ).get_json()["ticket"]
    content = png_bytes(6000)
    answer = post(client, value, [("file", "cat.png", content)], fields=[("caption", "a cat")])
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["owner"] == "portal" and body["tenant"] == "acme" and body["projectId"] == "p1"
    assert body["metadata"] == {"caption": "a cat", "source": "portal"}  # never the ticket
    assert body["s3Key"].startswith("acme/projects/p1/media/")
    assert_stored(svc, body, content)


def test_the_form_may_repeat_the_project_and_fixed_fields(client, ticket, svc):
    value = ticket(projectId="p2", fields={"source": "portal"})
    answer = post(
        client, value, fields=[("projectId", "p2"), ("source", "portal")], query="?projectId=p2"
    )
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["projectId"] == "p2"
    assert answer.get_json()["metadata"] == {"source": "portal"}


def test_a_ticket_wins_over_a_cookie_that_came_along(client, ticket, token):
    for cookie in ("not-a-jwt", token("mallory", projects=["p9"])):
        headers = {"Cookie": f"__Host-gateway_session={cookie}"}
        answer = post(client, ticket(), headers=headers)
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["owner"] == "alice"


def test_a_self_signed_ticket_works_with_the_ticket_secret_and_a_tenant_key(client, svc):
    answer = post(client, signed(tenant="globex"))
    assert answer.status_code == 201 and answer.get_json()["tenant"] == "globex"
    answer = post(client, signed(key=ACME_SECRET, kid="tenant:acme", tenant="acme"))
    assert answer.status_code == 201 and answer.get_json()["owner"] == "partner-user"


def test_several_files_within_the_limits(client, ticket, svc):
    value = ticket(
        maxFiles=2, maxFileBytes=20_000, maxBytes=30_000, types=["image/png", "video/mp4"]
    )
    files = [("files", "a.png", png_bytes(15_000)), ("files", "b.mp4", mp4_bytes(15_000))]
    answer = post(client, value, files)
    assert answer.status_code == 201, answer.get_json()
    assert [f["contentType"] for f in answer.get_json()["files"]] == ["image/png", "video/mp4"]


def test_empty_file_inputs_do_not_count_against_max_files(client, ticket, svc):
    value = ticket(maxFiles=1)
    files = [("files", "", b""), ("files", "a.png", png_bytes(5000)), ("files", "", b"")]
    answer = post(client, value, files)
    assert answer.status_code == 201, answer.get_json()
    assert len(answer.get_json()["files"]) == 1


# -- single use --------------------------------------------------------------------------------------
def test_a_double_submit_gets_the_first_answer_and_stores_once(client, ticket, svc):
    value = ticket()
    first = post(client, value, fields=[("caption", "x")])
    assert first.status_code == 201
    # The same form again, as a browser rebuilds it (another boundary): the same answer.
    body, _ = form_body(
        [("ticket", value), ("caption", "x")],
        [("file", "a.png", png_bytes(5000))],
        boundary="other-boundary-1234",
    )
    again = client.post(
        "/api/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=other-boundary-1234"},
    )
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(leftovers(svc)["records"]) == 1


def test_a_used_ticket_is_refused_for_another_post(client, ticket, svc):
    value = ticket()
    assert post(client, value).status_code == 201
    for files, fields in (
        ([("file", "b.png", png_bytes(5000, seed=4))], ()),  # another file
        ([("file", "a.png", png_bytes(5000))], [("caption", "y")]),  # another field
    ):
        refused(post(client, value, files, fields=fields), 409, "ticket_used")
    assert len(leftovers(svc)["records"]) == 1


def test_a_failed_post_leaves_the_ticket_for_the_next_try(client, ticket, svc):
    value = ticket()
    refused(post(client, value, [("file", "x.bin", b"\x00" * 5000)]), 415, "unsupported_type")
    assert_nothing_left(svc)
    assert post(client, value).status_code == 201


def test_an_idempotency_key_header_is_not_read_on_a_ticket_post(client, ticket):
    value = ticket()
    assert post(client, value, headers={"Idempotency-Key": "k1"}).status_code == 201
    other = post(
        client,
        value,
        [("file", "b.png", png_bytes(5000, seed=4))],
        headers={"Idempotency-Key": "k2"},
    )
    refused(other, 409, "ticket_used")
    assert post(client, ticket(), headers={"Idempotency-Key": "not valid \x7f"}).status_code == 201


# -- refusals: exact answers, nothing left ----------------------------------------------------------
def expired() -> str:
    now = int(time.time())
    return signed(iat=now - 700, exp=now - 100, redirect=PARTNER + "/done")


def tampered(value: str) -> str:
    header, payload, signature = value.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["maxFiles"] = 99
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"


CASES = {
    # name: (ticket request or a signer, fields, files, status, code)
    "expired": (expired, [], None, 401, "ticket_expired"),
    "tampered": (lambda: tampered(signed(maxFiles=1)), [], None, 401, "ticket_invalid"),
    "another tenant's key": (
        lambda: signed(key=ACME_SECRET, kid="tenant:acme", tenant="globex"),
        [],
        None,
        403,
        "ticket_tenant",
    ),
    "a bearer token": ("bearer", [], None, 401, "ticket_invalid"),
    "another project (field)": ({}, [("projectId", "p2")], None, 403, "ticket_project"),
    "a fixed field overridden": (
        {"fields": {"source": "portal"}},
        [("source", "elsewhere")],
        None,
        403,
        "ticket_field",
    ),
    "too many files": (
        {"maxFiles": 1},
        [],
        [("files", "a.png", png_bytes(3000)), ("files", "b.png", png_bytes(3000, 5))],
        413,
        "form_limit",
    ),
    "a file too large": (
        {"maxFileBytes": 4999},
        [],
        [("file", "a.png", png_bytes(5000))],
        413,
        "too_large",
    ),
    "too many bytes in all": (
        {"maxBytes": 9999},
        [],
        [("files", "a.png", png_bytes(5000)), ("files", "b.png", png_bytes(5000, 5))],
        413,
        "too_large",
    ),
    "a type the ticket does not allow": (
        {"types": ["image/png"]},
        [],
        [("file", "a.jpg", jpeg_bytes(5000))],
        415,
        "unsupported_type",
    ),
}


def ticket_of(case, ticket, token):
    request = CASES[case][0]
    if request == "bearer":
        return token(projects=["p1"])
    if callable(request):
        return request()
    return ticket(**request)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_refusal_is_exact_and_leaves_nothing(client, ticket, token, svc, case):
    _, fields, files, status, code = CASES[case]
    value = ticket_of(case, ticket, token)
    answer = post(client, value, files or [("file", "a.png", png_bytes(5000))], fields=fields)
    refused(answer, status, code)
    assert answer.get_json()["error"]["code"] == code
    assert_nothing_left(svc)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_browser_is_sent_back_with_the_code_once_the_ticket_is_known(
    client, ticket, token, svc, case
):
    """After the signature is verified, the ticket's redirect gets ?error=<code>; before (a
    forged ticket, a bearer token), the gateway's error page, pointing back to the form."""
    _, fields, files, status, code = CASES[case]
    request = CASES[case][0]
    if isinstance(request, dict):
        request = {**request, "redirect": PARTNER + "/done"}
        value = ticket(**request)
    else:
        value = ticket_of(case, ticket, token)
    answer = post(
        client, value, files or [("file", "a.png", png_bytes(5000))], fields=fields, headers=BROWSER
    )
    if code in ("ticket_invalid", "ticket_tenant"):
        assert answer.status_code == status and answer.mimetype == "text/html"
        html = answer.get_data(as_text=True)
        assert f'data-code="{code}"' in html and "Go back to the form you came from" in html
        assert "Sign in" not in html and "Location" not in answer.headers
    else:
        assert answer.status_code == 303
        assert answer.headers["Location"] == f"{PARTNER}/done?error={code}"
    assert_nothing_left(svc)


def test_a_different_second_ticket_field_is_refused(client, ticket):
    refused(post(client, ticket(), fields=[("ticket", ticket())]), 403, "ticket_field")
    value = ticket()
    assert post(client, value, fields=[("ticket", value)]).status_code == 201


def test_another_project_in_the_query_is_refused_before_the_body(client, ticket, svc):
    refused(post(client, ticket(), query="?projectId=p2"), 403, "ticket_project")
    refused(post(client, ticket(), query="?projectId=a..b"), 400, "invalid_project_id")
    assert_nothing_left(svc)


def test_a_gateway_without_a_ticket_key_answers_501(tmp_path):
    from test_auth import RSA_PUBLIC

    app = create_app(make_settings(tmp_path, jwt_secret="", jwt_public_key=RSA_PUBLIC))
    init_stores(app.extensions["gateway"])
    client = app.test_client()
    refused(post(client, signed()), 501, "tickets_unavailable")
    assert_nothing_left(app.extensions["gateway"])


def test_with_rs256_a_ticket_keyed_with_the_public_key_is_not_valid(tmp_path):
    from test_auth import RSA_PUBLIC

    settings = make_settings(
        tmp_path, jwt_secret="", jwt_public_key=RSA_PUBLIC, ticket_secret=TICKET_SECRET
    )
    app = create_app(settings)
    init_stores(app.extensions["gateway"])
    client = app.test_client()
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    now = int(time.time())
    body = jwt.utils.base64url_encode(
        json.dumps(
            {
                "aud": tk.AUDIENCE,
                "sub": "x",
                "project": "p1",
                "jti": "j",
                "iat": now,
                "exp": now + 60,
            }
        ).encode()
    )
    import hashlib
    import hmac

    signature = hmac.new(RSA_PUBLIC.encode(), header + b"." + body, hashlib.sha256).digest()
    forged = (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()
    refused(post(client, forged), 401, "ticket_invalid")
    assert post(client, signed()).status_code == 201


# -- a ticket is never a bearer token, nor a bearer token a ticket ----------------------------------
@pytest.mark.parametrize("same_key", [False, True])
def test_tickets_and_bearer_tokens_never_pass_for_each_other(tmp_path, same_key):
    """Even when an operator gives both the same key, the audience keeps them apart."""
    settings = make_settings(tmp_path, ticket_secret=JWT_SECRET if same_key else "")
    app = create_app(settings)
    init_stores(app.extensions["gateway"])
    client = app.test_client()
    from gateway.http.auth import mint_token

    with app.app_context():
        bearer = mint_token("alice", projects=["p1"])
    value = client.post(
        "/api/tickets", json={"projectId": "p1"}, headers={"Authorization": f"Bearer {bearer}"}
    ).get_json()["ticket"]
    # a ticket as a bearer token: the upload, the media list, the session
    for answer in (
        post(
            client, None, fields=[("projectId", "p1")], headers={"Authorization": f"Bearer {value}"}
        ),
        client.get("/api/media?projectId=p1", headers={"Authorization": f"Bearer {value}"}),
        client.post("/api/session", headers={"Authorization": f"Bearer {value}"}),
    ):
        refused(answer, 401, "invalid_token")
    # nor with the ticket audience among others, nor as the sign-in page's token
    with app.app_context():
        from flask_jwt_extended import create_access_token

        listed = create_access_token("alice", additional_claims={"aud": ["app", tk.AUDIENCE]})
    listing = client.get("/api/media?projectId=p1", headers={"Authorization": f"Bearer {listed}"})
    refused(listing, 401, "invalid_token")
    sign_in = client.post(
        "/upload/sign-in", data={"token": value}, headers={"Origin": "http://localhost"}
    )
    assert sign_in.status_code == 303 and sign_in.headers["Location"].endswith("failed=1")
    assert "Set-Cookie" not in sign_in.headers
    # a bearer token as a ticket
    refused(post(client, bearer), 401, "ticket_invalid")
    assert post(client, value).status_code == 201
    assert_nothing_left_but(app.extensions["gateway"], 1)


def assert_nothing_left_but(svc, records: int) -> None:
    assert len(leftovers(svc)["records"]) == records


# -- the 16 KiB window, before the first file ----------------------------------------------------------
def padded(value: str, padding: int):
    notes = [(f"note{i}", "n" * min(4000, padding - i * 4000)) for i in range(-(-padding // 4000))]
    return form_body([*notes, ("ticket", value)], [("file", "a.png", png_bytes(200_000))])


def test_the_ticket_must_arrive_within_the_first_16_kib(client, ticket, svc):
    window = csrf.FORM_WINDOW_BYTES
    value = ticket()
    fits = None
    for padding in range(window - len(value) - 2000, window):
        body, _ = padded(value, padding)
        end = body.index(value.encode()) + len(value) + len(b"\r\n--" + BOUNDARY.encode()) + 2
        if end == window:
            fits = padding
            break
    assert fits is not None
    body, content_type = padded(value, fits)
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 201, answer.get_json()
    body, content_type = padded(ticket(), fits + 1)  # one byte later: no ticket seen
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type})
    refused(answer, 401, "missing_token")
    assert len(leftovers(svc)["records"]) == 1


def test_a_ticket_after_the_first_file_is_too_late(client, ticket, svc):
    value = ticket()
    body, content_type = form_body([], [("file", "a.png", png_bytes(5000))])
    closing = f"--{BOUNDARY}--\r\n".encode()
    late = (
        body[: -len(closing)]
        + (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="ticket"\r\n\r\n{value}\r\n'
        ).encode()
        + closing
    )
    answer = client.post("/api/upload", data=late, headers={"Content-Type": content_type})
    refused(answer, 401, "missing_token")
    assert_nothing_left(svc)


def test_a_post_without_any_credential_is_refused_for_its_token(client, svc):
    refused(post(client, None, fields=[("projectId", "p1")]), 401, "missing_token")
    page = post(client, None, headers=BROWSER)
    refused(page, 401, "missing_token")
    assert "Sign in and try again" in page.get_data(as_text=True)
    assert_nothing_left(svc)


# -- nothing reserved, nothing sent to S3, before the ticket is verified ---------------------------------
def test_an_unverified_ticket_costs_no_s3_call_and_no_reservation(tmp_path, moto_url, monkeypatch):
    settings = make_settings(
        tmp_path,
        backend="s3",
        moto_url=moto_url,
        ticket_secret=TICKET_SECRET,
        quota_project_bytes=10 * MiB,
    )
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    reserved = []
    reserve = svc.records.reserve

    def counted(reservation, **kwargs):
        reserved.append(reservation)
        return reserve(reservation, **kwargs)

    monkeypatch.setattr(svc.records, "reserve", counted)
    calls = record_s3_calls(svc)
    client = app.test_client()
    for value in (
        expired(),
        tampered(signed()),
        signed(key="x" * 40),
        signed(project="p1", fields={"a": 1}),
    ):
        answer = post(client, value, [("file", "a.png", png_bytes(3 * MiB))])
        assert answer.status_code in (401, 403), answer.get_json()
    assert calls == [] and reserved == []
    assert post(client, signed()).status_code == 201
    assert calls and len(reserved) == 1  # the control: a verified ticket does both
    assert leftovers(svc)["pending_uploads"] == []


# -- the rule on every backend ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "s3", "s3+dynamodb"])
def test_a_file_over_its_tickets_limit_is_refused_mid_stream_and_its_parts_are_aborted(
    client, ticket, svc
):
    value = ticket(maxFileBytes=12 * MiB)
    content = mp4_bytes(13 * MiB)  # two 5 MiB parts go to S3 before the limit is crossed
    refused(post(client, value, [("file", "clip.mp4", content)]), 413, "too_large")
    assert_nothing_left(svc)
    again = post(client, value, [("file", "clip.mp4", content[: 12 * MiB])])
    assert again.status_code == 201, again.get_json()
    assert_stored(svc, again.get_json(), content[: 12 * MiB])
    refused(post(client, value, [("file", "b.png", png_bytes(5000))]), 409, "ticket_used")


@pytest.mark.parametrize("backend", ["s3+dynamodb"])
def test_single_use_on_dynamodb(client, ticket, svc):
    value = ticket()
    first = post(client, value)
    assert first.status_code == 201
    again = post(client, value)
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    refused(post(client, value, [("file", "b.png", png_bytes(5000, 4))]), 409, "ticket_used")
    refused(post(client, expired()), 401, "ticket_expired")
    assert len(leftovers(svc)["records"]) == 1


# -- browsers ---------------------------------------------------------------------------------------------
def test_a_browser_is_sent_to_the_tickets_redirect_with_the_media(client, ticket, svc):
    value = ticket(redirect=PARTNER + "/done?form=7")
    content = png_bytes(5000)
    answer = post(client, value, [("file", "a.png", content)], headers=BROWSER)
    assert answer.status_code == 303
    location = urlparse(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == PARTNER + "/done"
    params = parse_qsl(location.query)
    assert params[0] == ("form", "7") and ("status", "stored") in params
    (media_id,) = [v for k, v in params if k == "mediaId"]
    assert svc.records.get(media_id).size == len(content)
    # a double submit: the same 303
    again = post(client, value, [("file", "a.png", content)], headers=BROWSER)
    assert again.status_code == 303 and again.headers["Location"] == answer.headers["Location"]


def test_the_forms_redirect_field_may_lead_to_the_tickets_origins(client, ticket, svc):
    value = ticket(redirectOrigins=[PARTNER])
    answer = post(client, value, fields=[("redirect", PARTNER + "/thanks")], headers=BROWSER)
    assert answer.status_code == 303 and answer.headers["Location"].startswith(PARTNER + "/thanks?")
    ours = post(
        client, ticket(), fields=[("redirect", "https://forms.example.org/t")], headers=BROWSER
    )
    assert ours.headers["Location"].startswith("https://forms.example.org/t?mediaId=")
    elsewhere = post(
        client,
        ticket(redirectOrigins=[PARTNER]),
        fields=[("redirect", "https://evil.example.com/x")],
        headers=BROWSER,
    )
    refused(elsewhere, 400, "invalid_redirect")
    assert "Location" not in elsewhere.headers
    assert len(leftovers(svc)["records"]) == 2


def test_a_fixed_redirect_cannot_be_changed_by_the_form(client, ticket, svc):
    value = ticket(redirect=PARTNER + "/done")
    for place in ("before", "after"):
        fields = [("redirect", "/upload/result")]
        if place == "before":  # seen with the ticket, before the body is read again
            body, content_type = form_body(
                [("redirect", "/upload/result"), ("ticket", value)],
                [("file", "a.png", png_bytes(5000))],
            )
            answer = client.post(
                "/api/upload", data=body, headers={"Content-Type": content_type, **BROWSER}
            )
        else:
            answer = post(client, value, fields=fields, headers=BROWSER)
        assert answer.status_code == 303
        assert answer.headers["Location"] == PARTNER + "/done?error=ticket_field"
    assert_nothing_left(svc)


def test_without_a_redirect_a_browser_gets_the_result_page(client, ticket):
    answer = post(client, ticket(), headers=BROWSER)
    assert answer.status_code == 303 and answer.headers["Location"].startswith(
        "/upload/result?mediaId="
    )


# -- the signing examples of docs/tickets.md ------------------------------------------------------------
def doc_example(language: str) -> str:
    text = (ROOT / "docs" / "tickets.md").read_text()
    (code,) = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    return code


def test_the_python_example_signs_a_ticket_the_gateway_takes(client, svc, monkeypatch):
    namespace: dict = {}
    exec(compile(doc_example("python"), "docs/tickets.md", "exec"), namespace)
    monkeypatch.setenv("GATEWAY_TICKET_SECRET", TICKET_SECRET)
    value = namespace["upload_ticket"](
        "p1", "user-42", fields={"source": "docs"}, redirect=PARTNER + "/done"
    )
    answer = post(client, value)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["owner"] == "user-42"
    assert answer.get_json()["metadata"] == {"source": "docs"}
    value = namespace["upload_ticket"](
        "p1", "user-43", tenant="acme", kid="tenant:acme", secret=ACME_SECRET, types=("image/png",)
    )
    assert post(client, value).get_json()["tenant"] == "acme"
    refused(post(client, value, [("file", "b.png", png_bytes(5000, 8))]), 409, "ticket_used")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_javascript_example_signs_a_ticket_the_gateway_takes(client, svc, tmp_path):
    script = tmp_path / "ticket.mjs"
    script.write_text(
        doc_example("js") + "\nconsole.log(uploadTicket(JSON.parse(process.argv[2])));\n"
    )

    def node(options: dict, **env) -> str:
        done = subprocess.run(
            ["node", str(script), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={"PATH": os.path.dirname(NODE), **env},
        )
        return done.stdout.strip()

    value = node(
        {
            "project": "p1",
            "subject": "js-user",
            "maxFiles": 2,
            "fields": {"source": "js"},
            "redirect": PARTNER + "/done",
        },
        GATEWAY_TICKET_SECRET=TICKET_SECRET,
    )
    claims = jwt.decode(value, TICKET_SECRET, algorithms=["HS256"], audience=tk.AUDIENCE)
    assert claims["maxFiles"] == 2 and claims["exp"] - claims["iat"] == 900
    answer = post(client, value)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["owner"] == "js-user"
    assert answer.get_json()["metadata"] == {"source": "js"}
    value = node(
        {
            "project": "p1",
            "subject": "js-user",
            "tenant": "acme",
            "kid": "tenant:acme",
            "secret": ACME_SECRET,
            "types": ["image/png"],
        }
    )
    assert post(client, value).get_json()["tenant"] == "acme"
    wrong = node(
        {
            "project": "p1",
            "subject": "x",
            "tenant": "globex",
            "kid": "tenant:acme",
            "secret": ACME_SECRET,
        }
    )
    refused(post(client, wrong), 403, "ticket_tenant")


def test_a_ticket_post_reserves_no_more_of_the_quota_than_its_ticket_allows(tmp_path):
    """The body (fields included) is longer than the quota; the files the ticket allows are not:
    the reservation holds the ticket's maxBytes, not the Content-Length."""
    settings = make_settings(tmp_path, ticket_secret=TICKET_SECRET, quota_project_bytes=100_000)
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    client = app.test_client()
    notes = [(f"note{i}", "n" * 4000) for i in range(18)]
    content = png_bytes(40_000)
    answer = post(client, signed(maxBytes=60_000), [("file", "a.png", content)], fields=notes)
    assert answer.status_code == 201, answer.get_json()
    assert int(answer.request.headers["Content-Length"]) > 100_000
    assert_stored(svc, answer.get_json(), content)
    over = post(client, signed(), [("file", "b.png", png_bytes(40_000, 3))], fields=notes)
    refused(over, 413, "quota_exceeded")  # the control: without the ticket's bound, refused
