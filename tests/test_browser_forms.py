"""Browsers without JavaScript: the session cookie and its CSRF token, plain form posts answered
with 303s and pages, the redirect field, the sign-in page. In-process (the Flask test client);
tests/test_browser.py drives the same through a real Chromium behind nginx."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from base64 import urlsafe_b64encode
from urllib.parse import parse_qsl, urlparse

import pytest

from gateway import create_app, errors
from gateway.config import origin_of
from gateway.uploads import csrf
from gateway.uploads.redirects import check_redirect, with_outcome

from conftest import JWT_SECRET, init_stores, make_settings
from support import (
    assert_nothing_left,
    assert_stored,
    form_body,
    leftovers,
    png_bytes,
    record_s3_calls,
)

COOKIE = "__Host-gateway_session"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


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
        redirect_origins=("https://forms.example.org",),
    )


@pytest.fixture
def client(app):
    return app.test_client(use_cookies=False)  # cookies as each test sends them


def expected_csrf(token: str) -> str:
    key = hmac.new(JWT_SECRET.encode(), b"upload-gateway csrf", hashlib.sha256).digest()
    digest = hmac.new(key, token.encode(), hashlib.sha256).digest()
    return urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def session(token):
    """A session cookie header and its CSRF token."""
    jwt = token(projects=["p1"])
    return {"Cookie": f"{COOKIE}={jwt}"}, expected_csrf(jwt)


def post_form(client, fields, files, headers, query=""):
    body, content_type = form_body(fields, files)
    return client.post(
        f"/api/upload{query}", data=body, headers={"Content-Type": content_type, **headers}
    )


def set_cookies(response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}


# -- the CSRF token --------------------------------------------------------------------------------
def test_the_csrf_token_is_an_hmac_of_the_session_jwt_under_a_key_derived_from_the_jwt_key(
    settings,
):
    key = csrf.key_of(settings)
    assert key == hmac.new(JWT_SECRET.encode(), b"upload-gateway csrf", hashlib.sha256).digest()
    assert csrf.token_for("a.b.c", key) == expected_csrf("a.b.c")
    assert csrf.token_for("a.b.c", key) != csrf.token_for("a.b.d", key)
    assert csrf.key_of(settings.replace(csrf_secret="s3cret")) == b"s3cret"
    assert csrf.matches("abc", "abc") and not csrf.matches("abc", "abd")
    assert not csrf.matches("abc", "ab") and not csrf.matches("abc", "\udcff")


# -- POST/DELETE /api/session ------------------------------------------------------------------------
def test_a_bearer_token_opens_a_session_cookie_and_gets_its_csrf_token(client, token):
    jwt = token(projects=["p1"])
    response = client.post("/api/session", headers={"Authorization": f"Bearer {jwt}"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["csrfToken"] == expected_csrf(jwt)
    assert body["csrfHeader"] == "X-CSRF-TOKEN" and body["csrfField"] == "csrf_token"
    cookies = set_cookies(response)
    session = cookies[COOKIE]
    assert session.startswith(f"{COOKIE}={jwt};")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in session.split("; ")
    max_age = int(re.search(r"Max-Age=(\d+)", session).group(1))
    assert 3590 <= max_age <= 3600  # until the token's exp (an hour)
    readable = cookies[f"{COOKIE}_csrf"]
    assert readable.startswith(f"{COOKIE}_csrf={expected_csrf(jwt)};")
    assert "HttpOnly" not in readable and "Secure" in readable


def test_a_session_cannot_be_opened_from_a_cookie_nor_without_a_token(client, session):
    cookie, token = session
    answer = client.post("/api/session", headers={**cookie, "X-CSRF-TOKEN": token})
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "missing_token"
    assert "Set-Cookie" not in answer.headers
    answer = client.post("/api/session")
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "missing_token"


def test_deleting_the_session_expires_both_cookies(client):
    response = client.delete("/api/session")
    assert response.status_code == 204
    cookies = set_cookies(response)
    assert set(cookies) == {COOKIE, f"{COOKIE}_csrf"}
    for cookie in cookies.values():
        assert "Max-Age=0" in cookie or "Expires=Thu, 01 Jan 1970" in cookie


def test_the_cookie_name_and_attributes_are_settings(tmp_path, token):
    settings = make_settings(
        tmp_path,
        session_cookie="uploads",
        session_cookie_secure=False,
        session_cookie_samesite="Strict",
    )
    app = create_app(settings)
    init_stores(app.extensions["gateway"])
    with app.app_context():
        from gateway.http.auth import mint_token

        jwt = mint_token("alice")
    response = app.test_client().post("/api/session", headers={"Authorization": f"Bearer {jwt}"})
    session = set_cookies(response)["uploads"]
    assert "Secure" not in session.split("; ") and "SameSite=Strict" in session.split("; ")


# -- cookie sessions on the API ------------------------------------------------------------------
def test_a_cookie_session_uploads_with_the_csrf_header(client, session, svc):
    cookie, token = session
    content = png_bytes(5000)
    answer = post_form(
        client,
        [("projectId", "p1")],
        [("file", "a.png", content)],
        {**cookie, "X-CSRF-TOKEN": token},
    )
    assert answer.status_code == 201, answer.get_json()
    assert_stored(svc, answer.get_json(), content)


@pytest.mark.parametrize("header", [None, "", "x" * 43])
def test_a_cookie_session_without_its_csrf_token_is_refused_and_nothing_is_stored(
    client, session, svc, header
):
    cookie, _ = session
    headers = dict(cookie) if header is None else {**cookie, "X-CSRF-TOKEN": header}
    answer = post_form(client, [("projectId", "p1")], [("file", "a.png", png_bytes(5000))], headers)
    assert answer.status_code == 403
    assert answer.get_json()["error"]["code"] == (
        "csrf_missing" if header is None else "csrf_invalid"
    )
    assert_nothing_left(svc)


def test_every_unsafe_api_call_of_a_cookie_session_needs_the_header(client, session):
    cookie, _ = session
    for method, url in [
        ("post", "/api/tus/"),
        ("delete", "/api/media/0123456789abcdef0123456789abcdef"),
        ("post", "/api/uploads/initiate"),
    ]:
        answer = getattr(client, method)(url, headers={**cookie, "Tus-Resumable": "1.0.0"})
        assert answer.status_code == 403, url
        assert answer.get_json()["error"]["code"] == "csrf_missing"
    # Reads need no token (a cross-site page cannot read the answer anyway).
    assert client.get("/api/media?projectId=p1", headers=cookie).status_code == 200


def test_a_bearer_header_wins_over_a_cookie_and_needs_no_csrf_token(client, token, svc):
    jwt = token(projects=["p1"])
    answer = post_form(
        client,
        [("projectId", "p1")],
        [("file", "a.png", png_bytes(5000))],
        {"Authorization": f"Bearer {jwt}", "Cookie": f"{COOKIE}=not-a-jwt"},
    )
    assert answer.status_code == 201


def test_an_expired_or_forged_session_cookie_is_refused(client, token):
    from datetime import timedelta

    for jwt, code in [
        (token(ttl=timedelta(seconds=-120)), "token_expired"),
        ("e30.e30.c2ln", "invalid_token"),
    ]:
        answer = post_form(
            client,
            [("csrf_token", expected_csrf(jwt)), ("projectId", "p1")],
            [("file", "a.png", png_bytes(100))],
            {"Cookie": f"{COOKIE}={jwt}"},
        )
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == code


# -- the csrf_token form field ---------------------------------------------------------------------
def test_a_plain_form_carries_its_csrf_token_as_a_field_before_the_files(client, session, svc):
    cookie, token = session
    content = png_bytes(5000)
    answer = post_form(
        client,
        [("projectId", "p1"), ("csrf_token", token), ("caption", "x")],
        [("file", "a.png", content)],
        cookie,
    )
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["metadata"] == {"caption": "x"}  # the token is not kept as metadata
    assert_stored(svc, body, content)


def test_a_csrf_field_after_the_first_file_is_too_late(client, session, svc):
    cookie, token = session
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(5000))])
    boundary = content_type.split("=", 1)[1].encode()
    closing = b"--" + boundary + b"--\r\n"
    assert body.endswith(closing)
    late = (
        body[: -len(closing)]
        + b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
        + token.encode()
        + b"\r\n"
        + closing
    )
    assert late.count(token.encode()) == 1
    answer = client.post("/api/upload", data=late, headers={"Content-Type": content_type, **cookie})
    assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "csrf_missing"
    assert_nothing_left(svc)


def test_a_wrong_csrf_field_is_refused_and_nothing_is_stored(client, session, svc, token):
    cookie, _ = session
    other = expected_csrf(token(sub="mallory", projects=["p1"]))
    answer = post_form(
        client,
        [("csrf_token", other), ("projectId", "p1")],
        [("file", "a.png", png_bytes(100))],
        cookie,
    )
    assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "csrf_invalid"
    assert_nothing_left(svc)


def test_a_form_without_files_and_without_its_token_is_refused_for_the_token(client, session):
    cookie, _ = session
    answer = post_form(client, [("projectId", "p1")], [], cookie)
    assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "csrf_missing"


class AccessLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        if isinstance(record.msg, dict):
            self.lines.append(record.msg)


@pytest.fixture
def access_log():
    handler = AccessLog()
    logger = logging.getLogger("gateway.access")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def padded_form(token: str, padding: int):
    """A form whose csrf_token field comes after ``padding`` bytes of other fields."""
    notes = [(f"note{i}", "n" * min(4000, padding - i * 4000)) for i in range(-(-padding // 4000))]
    return form_body(
        [*notes, ("csrf_token", token), ("projectId", "p1")],
        [("file", "a.png", png_bytes(200_000))],
    )


def csrf_field_end(body: bytes, token: str) -> int:
    """Where the csrf_token field ends: the parser sees it once the next delimiter line is in."""
    return (
        body.index(token.encode())
        + len(token)
        + len(b"\r\n--")
        + len(b"----gatewaytestboundary7MA4YWxkTrZu0gW")
    )


def test_the_csrf_field_must_arrive_within_the_first_16_kib_and_no_more_is_read(
    client, settings, session, svc, access_log
):
    cookie, token = session
    window = csrf.FORM_WINDOW_BYTES
    assert window == 16 * 1024
    settings_read = settings.read_size
    assert settings_read > window  # the small reads are the window's, not the default
    # The field is complete exactly at the window's last byte: accepted.
    fits = 0
    for padding in range(window - 2000, window):
        body, _ = padded_form(token, padding)
        if csrf_field_end(body, token) + 2 == window:  # the delimiter's CRLF included
            fits = padding
            break
    assert fits
    body, content_type = padded_form(token, fits)
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **cookie})
    assert answer.status_code == 201, answer.get_json()
    # One byte later: refused, after reading exactly the window.
    body, content_type = padded_form(token, fits + 1)
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **cookie})
    assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "csrf_missing"
    assert access_log[-1]["bytes"] == window
    assert len(leftovers(svc)["records"]) == 1  # only the first upload's


# -- browser form posts: 303s and pages ----------------------------------------------------------
def browser(cookie, **extra):
    return {**cookie, "Accept": BROWSER_ACCEPT, **extra}


def test_a_browser_form_post_is_answered_with_a_303_to_the_result_page(client, session, svc):
    cookie, token = session
    content = png_bytes(5000)
    answer = post_form(
        client,
        [("csrf_token", token), ("projectId", "p1")],
        [("files", "a.png", content)],
        browser(cookie),
    )
    assert answer.status_code == 303
    location = urlparse(answer.headers["Location"])
    assert location.path == "/upload/result"
    (media_id,) = [v for k, v in parse_qsl(location.query) if k == "mediaId"]
    record = svc.records.get(media_id)
    assert record.size == len(content)
    page = client.get(f"/upload/result?mediaId={media_id}", headers=cookie)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'data-media-id="{media_id}"' in html and "a.png" in html
    url = re.search(r'data-role="url" href="([^"]+)"', html).group(1)
    assert client.get(urlparse(url).path).data == content
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_the_redirect_field_gets_the_outcome_appended(client, session, svc):
    cookie, token = session
    for target in ("/thanks?from=form#top", "https://forms.example.org/done"):
        answer = post_form(
            client,
            [("csrf_token", token), ("redirect", target), ("projectId", "p1")],
            [("file", "a.png", png_bytes(5000)), ("file", "b.png", png_bytes(6000, seed=3))],
            browser(cookie),
        )
        assert answer.status_code == 303
        location = answer.headers["Location"]
        assert location.startswith(target.split("?")[0].split("#")[0])
        params = parse_qsl(urlparse(location).query)
        ids = [v for k, v in params if k == "mediaId"]
        assert len(ids) == 2 and [v for k, v in params if k == "status"] == ["stored"] * 2
        assert all(v.endswith(".png") for k, v in params if k == "url")
        if target.startswith("/thanks"):
            assert params[0] == ("from", "form") and location.endswith("#top")
        body = svc.records.get(ids[0])
        assert "redirect" not in body.metadata


def test_an_error_after_the_redirect_field_redirects_with_its_code_and_keeps_nothing(
    client, session, svc
):
    cookie, token = session
    answer = post_form(
        client,
        [
            ("csrf_token", token),
            ("redirect", "https://forms.example.org/done"),
            ("projectId", "p1"),
        ],
        [("file", "a.png", png_bytes(5000)), ("file", "x.bin", b"\x00" * 5000)],
        browser(cookie),
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "https://forms.example.org/done?error=unsupported_type"
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.com/x",
        "//evil.example.com/x",
        "/\\evil.example.com",
        "javascript:alert(1)",
    ],
)
def test_a_redirect_to_an_origin_not_allowed_is_refused_with_a_page(client, session, svc, target):
    cookie, token = session
    answer = post_form(
        client,
        [("csrf_token", token), ("redirect", target), ("projectId", "p1")],
        [("file", "a.png", png_bytes(5000))],
        browser(cookie),
    )
    assert answer.status_code == 400 and answer.mimetype == "text/html"
    assert 'data-code="invalid_redirect"' in answer.get_data(as_text=True)
    assert "Location" not in answer.headers
    assert_nothing_left(svc)


def test_errors_of_a_browser_form_post_are_pages_not_json(client, session, svc):
    cookie, _ = session
    answer = post_form(
        client, [("projectId", "p1")], [("file", "a.png", png_bytes(100))], browser(cookie)
    )
    assert answer.status_code == 403 and answer.mimetype == "text/html"
    html = answer.get_data(as_text=True)
    assert 'data-code="csrf_missing"' in html and "Nothing was stored" in html
    signed_out = post_form(
        client, [], [("file", "a.png", png_bytes(100))], {"Accept": BROWSER_ACCEPT}
    )
    assert signed_out.status_code == 401 and signed_out.mimetype == "text/html"
    assert "Sign in and try again" in signed_out.get_data(as_text=True)
    assert_nothing_left(svc)


def test_api_clients_still_get_json(client, auth):
    answer = post_form(client, [("projectId", "p1")], [], {**auth, "Accept": "*/*"})
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "no_file"


def test_the_result_page_refreshes_itself_until_processing_has_settled(client, session, svc):
    cookie, token = session
    answer = post_form(
        client,
        [("csrf_token", token), ("projectId", "p1")],
        [("file", "a.png", png_bytes(500))],
        browser(cookie),
    )
    html = client.get(answer.headers["Location"], headers=cookie).get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="3">' in html  # stored: processing follows
    media_id = re.search(r'data-media-id="([0-9a-f]+)"', html).group(1)
    from gateway.media.lifecycle import Status

    record = svc.records.get(media_id)
    svc.records.update(record.evolve(status=Status.PROCESSING), expected=record)
    record = svc.records.get(media_id)
    svc.records.update(record.evolve(status=Status.READY), expected=record)
    html = client.get(answer.headers["Location"], headers=cookie).get_data(as_text=True)
    assert "http-equiv" not in html and 'data-state="ready"' in html


@pytest.mark.parametrize(
    "code, shown",
    [
        ("too_large", "too_large"),
        ("internal_error", "internal_error"),
        ("", "request_rejected"),
        ("no-such-code", "request_rejected"),
    ],
)
def test_the_result_page_explains_an_error_code_it_is_sent(client, code, shown):
    page = client.get(f"/upload/result?error={code}")
    assert page.status_code == 200 and f'data-code="{shown}"' in page.get_data(as_text=True)


# -- the upload page, sign-in and sign-out -------------------------------------------------------
def test_the_upload_page_asks_to_sign_in_first(client):
    page = client.get("/upload")
    assert page.status_code == 200 and 'id="sign-in-form"' in page.get_data(as_text=True)


def test_signing_in_with_a_token_sets_the_session_and_the_page_carries_its_csrf_token(
    client, token
):
    jwt = token(projects=["p1"])
    answer = client.post(
        "/upload/sign-in", data={"token": jwt}, headers={"Origin": "http://localhost"}
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/upload"
    assert set_cookies(answer)[COOKIE].startswith(f"{COOKIE}={jwt};")
    page = client.get("/upload", headers={"Cookie": f"{COOKIE}={jwt}"})
    html = page.get_data(as_text=True)
    assert f'name="csrf_token" value="{expected_csrf(jwt)}"' in html
    assert html.index('name="csrf_token"') < html.index('type="file"')
    assert 'value="p1"' in html  # the token's only project
    assert page.headers["Cache-Control"] == "no-store"


def test_a_bad_token_or_a_foreign_origin_does_not_sign_in(client, token):
    answer = client.post("/upload/sign-in", data={"token": "nope"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/upload?failed=1"
    assert "Set-Cookie" not in answer.headers
    answer = client.post(
        "/upload/sign-in", data={"token": token()}, headers={"Origin": "https://evil.example.com"}
    )
    assert answer.status_code == 403 and answer.mimetype == "text/html"
    assert "Set-Cookie" not in answer.headers


def test_signing_out_clears_the_session(client):
    answer = client.post("/upload/sign-out", headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    assert set(set_cookies(answer)) == {COOKIE, f"{COOKIE}_csrf"}


def test_a_csrf_token_is_the_whole_unpadded_base64url_digest():
    key = b"k" * 32
    tokens = [csrf.token_for(f"jwt-{i}", key) for i in range(400)]
    assert all(len(t) == 43 and "=" not in t for t in tokens)  # 256 bits, padding stripped


# -- redirects ---------------------------------------------------------------------------------------
def test_redirect_rules():
    allowed = ("https://forms.example.org",)
    assert check_redirect("/done", allowed) == "/done"
    assert check_redirect("https://FORMS.example.org/x", allowed) == "https://FORMS.example.org/x"
    for bad in (
        "//x.org",
        "/\\x.org",
        "https://forms.example.org.evil.com/",
        "http://forms.example.org/",  # another scheme is another origin
        "https://user@forms.example.org/",
        "/a b",
        "/" + "a" * 2048,
        "data:text/html,x",
    ):
        with pytest.raises(Exception) as info:
            check_redirect(bad, allowed)
        assert getattr(info.value, "code", None) == "invalid_redirect", bad
    assert check_redirect("/" + "a" * 2047, allowed)
    assert check_redirect('/a!"#b', allowed) == '/a!"#b'  # printable ASCII from "!" on
    for control in ("/a\x7f", "/a\x00", "/a\tb", "/a b"):
        with pytest.raises(errors.InvalidRedirect):
            check_redirect(control, allowed)
    with pytest.raises(errors.InvalidRedirect) as refused:
        check_redirect("https://evil.example/", allowed)
    assert refused.value.message == (
        "redirect must be a path on the gateway or a URL on an allowed origin "
        "(GATEWAY_REDIRECT_ORIGINS)."
    )
    assert with_outcome("/d?a=1#f", [("b", "2 3")]) == "/d?a=1&b=2+3#f"
    assert with_outcome("/d?a=&c=1", [("b", "")]) == "/d?a=&c=1&b="


def test_origins():
    assert origin_of("https://Forms.Example.org:8443/x?y") == "https://forms.example.org:8443"
    for not_an_origin in ("https:///path", "https://user@x.org/", "ftp://x.org", "http://x:99999/"):
        assert origin_of(not_an_origin) is None, not_an_origin


def test_on_s3_a_refused_csrf_token_costs_no_s3_call_and_leaves_nothing(tmp_path, moto_url, token):
    settings = make_settings(tmp_path, backend="s3", moto_url=moto_url)
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    calls = record_s3_calls(svc)
    jwt = token(projects=["p1"])
    with app.app_context():
        client = app.test_client(use_cookies=False)
        for fields, code in (
            ([("projectId", "p1")], "csrf_missing"),
            ([("csrf_token", expected_csrf(jwt) + "x"), ("projectId", "p1")], "csrf_invalid"),
        ):
            answer = post_form(
                client,
                fields,
                [("file", "a.png", png_bytes(7 * 1024 * 1024))],
                {"Cookie": f"{COOKIE}={jwt}"},
            )
            assert answer.status_code == 403 and answer.get_json()["error"]["code"] == code
    assert calls == []
    assert_nothing_left(svc)
    answer = post_form(
        client,
        [("csrf_token", expected_csrf(jwt)), ("projectId", "p1")],
        [("file", "a.png", png_bytes(7 * 1024 * 1024))],
        {"Cookie": f"{COOKIE}={jwt}"},
    )
    assert answer.status_code == 201 and "CreateMultipartUpload" in calls  # the hook does count
