"""Upload tickets end to end: real gunicorn behind real nginx. curl posts a ticket as a script
would; raw sockets post the same form twice, as a browser's double submit does; and Debian's
Chromium, JavaScript off, submits a form that a page of another site (a small server this test
starts) renders with a fresh ticket from its backend, the two sites told apart by name
(``--host-resolver-rules`` maps partner.test and uploads.test to loopback)."""

from __future__ import annotations

import hashlib
import html
import http.server
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import jwt
import pytest
import requests

from e2e_harness import ensure_chromium, gateway_stack, read_response
from support import assert_nothing_left, form_body, jpeg_bytes, leftovers, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TICKET_SECRET = "e2e-ticket-secret-" + "t" * 32


@pytest.fixture(scope="module")
def stack_once(tmp_path_factory):
    with gateway_stack(
        tmp_path_factory.mktemp("e2e-tickets"),
        mode="embedded",
        GATEWAY_TICKET_SECRET=TICKET_SECRET,
        GATEWAY_ALLOWED_TYPES="image/*,video/*",
        GATEWAY_PROCESSING="off",
        # plain http on a name that is not localhost: a Secure (__Host-) cookie would not stick
        GATEWAY_SESSION_COOKIE="gateway_session",
        GATEWAY_SESSION_COOKIE_SECURE="off",
    ) as stack:
        yield stack


@pytest.fixture
def stack(stack_once):
    stack_once.reset()
    yield stack_once
    print(stack_once.logs())  # shown only when the test failed


def issue(stack, **request) -> str:
    answer = requests.post(
        stack.url + "/api/tickets",
        json={"projectId": "p1", **request},
        headers=stack.auth,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["ticket"]


def records(stack) -> list[str]:
    return leftovers(stack.svc)["records"]


# -- curl, as a script -------------------------------------------------------------------------------
def test_curl_posts_a_ticket_field_and_gets_json(stack, tmp_path):
    content = png_bytes(300_000)
    path = tmp_path / "cat.png"
    path.write_bytes(content)
    ticket = issue(stack, maxFiles=1, fields={"source": "script"})
    result = stack.curl(
        "-F", f"ticket={ticket}", "-F", "caption=x", "-F", f"file=@{path}", token=None
    )
    assert result.status == 201, result.body
    body = result.json()
    assert body["owner"] == "alice" and body["metadata"] == {"caption": "x", "source": "script"}
    record = stack.svc.records.get(body["mediaId"])
    assert record.sha256 == hashlib.sha256(content).hexdigest() == body["sha256"]
    assert requests.get(body["url"], timeout=10).content == content
    # The same command again: the first answer; another file: refused.
    again = stack.curl(
        "-F", f"ticket={ticket}", "-F", "caption=x", "-F", f"file=@{path}", token=None
    )
    assert again.status == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["mediaId"] == body["mediaId"]
    other = tmp_path / "other.png"
    other.write_bytes(png_bytes(5000, seed=9))
    used = stack.curl("-F", f"ticket={ticket}", "-F", f"file=@{other}", token=None)
    assert used.status == 409 and used.json()["error"]["code"] == "ticket_used"
    assert records(stack) == [body["mediaId"]]


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("none", 401, "missing_token"),
        ("expired", 401, "ticket_expired"),
        ("tampered", 401, "ticket_invalid"),
        ("too large", 413, "too_large"),
        ("wrong type", 415, "unsupported_type"),
    ],
)
def test_curl_refusals_through_nginx_leave_nothing(stack, tmp_path, case, status, code):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(3 * 1024 * 1024))
    now = int(time.time())
    ticket = {
        "none": None,
        "expired": jwt.encode(
            {
                "aud": "upload-gateway:ticket",
                "sub": "s",
                "project": "p1",
                "jti": "e1",
                "iat": now - 700,
                "exp": now - 100,
            },
            TICKET_SECRET,
            algorithm="HS256",
        ),
        "tampered": issue(stack)[:-3] + "AAA",
        "too large": issue(stack, maxFileBytes=1024 * 1024),
        "wrong type": issue(stack, types=["video/*"]),
    }[case]
    fields = [] if ticket is None else ["-F", f"ticket={ticket}"]
    result = stack.curl(*fields, "-F", f"file=@{path}", token=None)
    assert result.status == status, result.body
    assert result.json()["error"]["code"] == code
    assert_nothing_left(stack.svc)


# -- a double submit, over raw sockets -----------------------------------------------------------------
def request_bytes(stack, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{stack.nginx_port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    return head.encode()


def claimed(stack, ticket: str) -> bool:
    """Whether a post holds the ticket's claim right now (the first post is under way)."""
    jti = jwt.decode(ticket, options={"verify_signature": False})["jti"]
    rows = stack.svc.records._run(
        lambda conn: conn.execute(
            "SELECT status FROM idempotency WHERE scope = 'ticket:' AND key = ?", (jti,)
        ).fetchall()
    )
    return rows == [(None,)]


def first_post_under_way(stack, ticket: str, body: bytes, content_type: str) -> socket.socket:
    """A first post that has sent its ticket and half its file, then waits."""
    sock = socket.create_connection(("127.0.0.1", stack.nginx_port), timeout=30)
    sock.sendall(request_bytes(stack, body, content_type) + body[: len(body) // 2])
    deadline = time.monotonic() + 20
    while not claimed(stack, ticket):
        assert time.monotonic() < deadline, "the first post never claimed its ticket"
        time.sleep(0.05)
    return sock


def test_a_resubmit_that_cancels_the_first_post_is_stored_once(stack):
    """A browser that submits again abandons its first post: that one ends (rolled back) as its
    connection closes, and the second, waiting for the ticket meanwhile, takes it."""
    ticket = issue(stack)
    content = png_bytes(2 * 1024 * 1024)
    body, content_type = form_body([("ticket", ticket)], [("file", "a.png", content)])
    first = first_post_under_way(stack, ticket, body, content_type)
    outcome: dict = {}

    def second() -> None:
        outcome["answer"] = requests.post(
            stack.url + "/api/upload",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)  # the second post is reading its ticket, or waiting for the first's claim
    first.close()  # the browser drops the first post
    thread.join(60)
    answer = outcome["answer"]
    assert answer.status_code == 201, answer.text
    assert records(stack) == [answer.json()["mediaId"]]
    assert stack.svc.records.get(answer.json()["mediaId"]).size == len(content)
    assert leftovers(stack.svc)["objects"] == [answer.json()["s3Key"]]


def test_a_second_post_while_the_first_runs_on_is_refused_in_progress(stack):
    ticket = issue(stack)
    body, content_type = form_body(
        [("ticket", ticket)], [("file", "a.png", png_bytes(1024 * 1024))]
    )
    first = first_post_under_way(stack, ticket, body, content_type)
    try:
        second = requests.post(
            stack.url + "/api/upload",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "ticket_in_progress"
        assert claimed(stack, ticket)  # still the first's
        first.sendall(body[len(body) // 2 :])  # the first one finishes after all
        reply = read_response(first)
        assert reply.status == 201, reply.body[:300]
    finally:
        first.close()
    assert len(records(stack)) == 1


# -- Chromium, JavaScript off, a form on another site -------------------------------------------------
class PartnerSite:
    """The other site's app: ``/`` renders its form with a fresh ticket from its backend
    (POST /api/tickets with its token, server to server), or with ``fixed`` when set; ``/done``
    is where the gateway sends the browser back, showing the query."""

    def __init__(self, stack) -> None:
        site = self
        self.stack = stack
        self.fixed: str | None = None
        self.with_ticket = True
        self.types = ["image/*"]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/":
                    page = site.page()
                else:
                    query = html.escape(urlparse(self.path).query)
                    page = f'<!doctype html><title>done</title><p id="query">{query}</p>'
                data = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://partner.test:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ticket(self) -> str:
        return self.fixed or issue(
            self.stack,
            maxFiles=2,
            types=self.types,
            redirect=self.origin + "/done",
            fields={"source": "partner"},
        )

    def page(self) -> str:
        hidden = ""
        if self.with_ticket:
            hidden = f'<input type="hidden" name="ticket" value="{html.escape(self.ticket())}">'
        action = f"http://uploads.test:{self.stack.nginx_port}/api/upload"
        return (
            "<!doctype html><title>partner form</title>"
            f'<form id="f" action="{action}" method="post" enctype="multipart/form-data">'
            f'{hidden}<input name="caption" value="from the partner">'
            '<input type="file" name="files" id="files" multiple><button>send</button></form>'
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def partner(stack_once):
    site = PartnerSite(stack_once)
    yield site
    site.close()


@pytest.fixture(scope="module")
def chromium(stack_once, partner):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=ensure_chromium(),
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP partner.test 127.0.0.1, MAP uploads.test 127.0.0.1",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, partner, stack):
    partner.fixed, partner.with_ticket, partner.types = None, True, ["image/*"]
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    yield page
    context.close()


def submit(page, partner, *paths: Path) -> dict[str, list[str]]:
    page.goto(partner.origin + "/")
    page.set_input_files("#files", [str(p) for p in paths])
    page.click("#f button")
    page.wait_for_load_state()
    query: dict[str, list[str]] = {}
    for name, value in parse_qsl(urlparse(page.url).query):
        query.setdefault(name, []).append(value)
    return query


def files(tmp_path, **contents: bytes) -> list[Path]:
    paths = []
    for name, content in contents.items():
        path = tmp_path / name.replace("_", ".")
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_a_form_on_another_site_uploads_with_its_ticket_and_is_sent_back(
    page, partner, stack, tmp_path
):
    contents = {"a_png": png_bytes(400_000, seed=1), "b_jpg": jpeg_bytes(300_000, seed=2)}
    query = submit(page, partner, *files(tmp_path, **contents))
    assert page.url.startswith(partner.origin + "/done?"), page.url
    assert query["status"] == ["stored", "stored"]
    for media_id, content in zip(query["mediaId"], contents.values(), strict=True):
        record = stack.svc.records.get(media_id)
        assert record.sha256 == hashlib.sha256(content).hexdigest() and record.size == len(content)
        assert record.metadata == {"caption": "from the partner", "source": "partner"}
        stored = (stack.media_root / record.s3_key).read_bytes()
        assert stored == content


def test_the_same_form_without_a_ticket_is_refused_and_stores_nothing(
    page, partner, stack, tmp_path
):
    partner.with_ticket = False
    submit(page, partner, *files(tmp_path, a_png=png_bytes(50_000)))
    assert urlparse(page.url).path == "/api/upload"
    assert page.get_attribute("#error", "data-code") == "missing_token"
    assert_nothing_left(stack.svc)


def test_going_back_and_sending_again_gets_the_same_answer_and_another_file_is_refused(
    page, partner, stack, tmp_path
):
    partner.fixed = issue(stack, redirect=partner.origin + "/done", types=["image/png"])
    (photo,) = files(tmp_path, a_png=png_bytes(200_000, seed=3))
    first = submit(page, partner, photo)
    again = submit(page, partner, photo)  # the same form, the same file: a resubmit
    assert first["mediaId"] == again["mediaId"] and len(first["mediaId"]) == 1
    (other,) = files(tmp_path, b_png=png_bytes(200_000, seed=4))
    assert submit(page, partner, other) == {"error": ["ticket_used"]}
    (wrong,) = files(tmp_path, c_jpg=jpeg_bytes(50_000))
    partner.fixed = issue(stack, redirect=partner.origin + "/done", types=["image/png"])
    assert submit(page, partner, wrong) == {"error": ["unsupported_type"]}
    assert records(stack) == first["mediaId"]


def test_an_expired_ticket_sends_the_browser_back_with_its_code(page, partner, stack, tmp_path):
    now = int(time.time())
    partner.fixed = jwt.encode(
        {
            "aud": "upload-gateway:ticket",
            "sub": "alice",
            "project": "p1",
            "jti": "old-1",
            "iat": now - 1000,
            "exp": now - 400,
            "redirect": partner.origin + "/done",
        },
        TICKET_SECRET,
        algorithm="HS256",
    )
    query = submit(page, partner, *files(tmp_path, a_png=png_bytes(50_000)))
    assert page.url.startswith(partner.origin + "/done?") and query == {"error": ["ticket_expired"]}
    assert_nothing_left(stack.svc)


def test_the_same_site_cookie_flow_still_works_and_its_cookie_stays_home(
    chromium, partner, stack, tmp_path
):
    """Signed in at the gateway's own page, its form uploads with the session cookie; the
    partner's form without a ticket gets no cookie along (SameSite=Lax, cross-site POST)."""
    uploads = f"http://uploads.test:{stack.nginx_port}"
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(uploads + "/upload")
        page.fill("#token", stack.token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#upload-form")
        assert [c["name"] for c in context.cookies(uploads)] == [
            "gateway_session",
            "gateway_session_csrf",
        ]
        (photo,) = files(tmp_path, own_png=png_bytes(60_000, seed=6))
        page.fill("#project-id", "p1")
        page.set_input_files("#files", str(photo))
        page.click("#upload-form button[type=submit]")
        page.wait_for_url("**/upload/result?**")
        media_id = page.get_attribute("#results li", "data-media-id")
        assert stack.svc.records.get(media_id).original_name == "own.png"
        partner.with_ticket = False
        submit(page, partner, photo)
        assert page.get_attribute("#error", "data-code") == "missing_token"
        assert records(stack) == [media_id]
    finally:
        partner.with_ticket = True
        context.close()
