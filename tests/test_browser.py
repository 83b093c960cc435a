"""The upload page in a real browser: Debian's Chromium driven by playwright, against gunicorn
behind nginx (embedded mode with a processing worker, and S3 mode on the moto server).

Screenshots of the page before, during and after uploads are written to var/test-artifacts/
browser/ (GATEWAY_TEST_ARTIFACTS overrides the directory).
"""

from __future__ import annotations

import hashlib
import html
import http.server
import io
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest
import requests
from media_samples import photo, png

from e2e_harness import ROOT, MiB, ensure_chromium, gateway_stack, poll
from faultproxy import FaultProxy
from support import png_bytes, record_ids

pytestmark = pytest.mark.slow
COOKIE = "__Host-gateway_session"
PNG_HEAD = png_bytes(4096)[:64]  # a PNG signature and header: sniffed as image/png
ARTIFACTS = (
    Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts")) / "browser"
)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, its microphone a fake device that plays a beep (the fake UI flag
    grants the permission prompt): what the Record button tests record."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def other_site():
    site = OtherSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, other_site):
    with gateway_stack(
        tmp_path_factory.mktemp("browser-embedded"),
        mode="embedded",
        GATEWAY_REDIRECT_ORIGINS=other_site.origin,
    ) as stack:
        stack.start_worker()
        yield stack


@pytest.fixture(scope="module")
def s3_proxy(moto_url):
    """The browser reaches S3 (moto) through this proxy, unchanged: its log shows which S3
    requests the browser itself sent (moto answers their CORS preflights from the bucket's
    rules, which flask init put there)."""
    proxy = FaultProxy(moto_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory, s3_proxy):
    with gateway_stack(
        tmp_path_factory.mktemp("browser-s3"),
        mode="s3",
        moto_url=s3_proxy.url,
        GATEWAY_CORS_ORIGINS="*",
        GATEWAY_PAGE_DIRECT_MIN_BYTES=str(8 * MiB),
        GATEWAY_DIRECT_PART_SIZE=str(5 * MiB),
        GATEWAY_DIRECT_SINGLE_PUT_MAX=str(5 * MiB),
        GATEWAY_PROCESSING="off",
    ) as stack:
        yield stack


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def signed_in(browser, stack, **options):
    """A browser context signed in through the gateway's sign-in page (the session cookie is
    HttpOnly and __Host-: only the gateway's own answer can set it)."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(stack.url + "/upload")
    page.fill("#token", stack.token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#upload-form")
    page.close()
    return context


def all_records(stack) -> list:
    return [stack.svc.records.get(media_id) for media_id in record_ids(stack.svc.records)]


def records_named(stack, name: str) -> list:
    return [r for r in all_records(stack) if r.original_name == name]


def stored_bytes(stack, media: dict) -> bytes:
    answer = requests.get(media_url(stack, media), timeout=30)
    answer.raise_for_status()
    return answer.content


def media_url(stack, media: dict) -> str:
    url = urlparse(media["url"])
    return stack.url + url.path + (f"?{url.query}" if url.query else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def tus_bytes_received(stack, upload_id: str | None = None) -> int:
    return sum(
        line["requestLength"]
        for line in stack.access_log_lines()
        if line["uri"].startswith("/api/tus/")
        and line["method"] == "PATCH"
        and (upload_id is None or upload_id in line["uri"])
    )


def throttle_uploads(page, bytes_per_second: int) -> None:
    """Chromium's own network emulation: request bodies leave at this rate."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second,
        },
    )


# -- without JavaScript ---------------------------------------------------------------------------
def test_without_javascript_the_form_signs_in_uploads_and_shows_the_stored_files_url(
    chromium, embedded, tmp_path
):
    content = photo(800, 600)
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(embedded.url + "/upload")
        page.fill("#token", embedded.token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#upload-form")
        shot(page, "no-js-1-before")
        page.fill("#project-id", "p1")
        page.set_input_files("#files", str(path))
        page.click("#upload-form button[type=submit]")
        page.wait_for_url("**/upload/result?**")
        shot(page, "no-js-2-result")
        media_id = page.get_attribute("#results li", "data-media-id")
        link = page.get_attribute("#results li a[data-role=url]", "href")
        assert link
        assert requests.get(link, timeout=30).content == content
        record = embedded.svc.records.get(media_id)
        assert record.size == len(content) and record.original_name == "photo.jpg"
        # The result page reloads itself until processing has settled, then shows the thumbnail.
        page.wait_for_selector(
            "#results li[data-state=ready] img[data-role=thumbnail]", timeout=60_000
        )
        shot(page, "no-js-3-ready")
    finally:
        context.close()


class OtherSite:
    """Another app of the same site (another port of 127.0.0.1): ``/`` serves ``html`` (a form
    that posts to the gateway with the visitor's cookie), any other path a "thanks" page that
    shows its query string."""

    def __init__(self):
        site = self
        self.html = b""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = site.html
                if self.path != "/":
                    query = html.escape(urlparse(self.path).query)
                    body = f'<!doctype html><title>thanks</title><p id="query">{query}</p>'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def form(self, target: str, *fields: tuple[str, str]) -> None:
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
            for name, value in fields
        )
        self.html = (
            "<!doctype html><title>a form elsewhere</title>"
            f'<form id="f" action="{target}" method="post" enctype="multipart/form-data">'
            f'{hidden}<input name="projectId" value="p1"><input type="file" name="file" id="file">'
            "<button>send</button></form>"
        ).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("csrf_field", [None, "made-up-token"])
def test_a_form_from_another_origin_without_the_sessions_csrf_token_stores_nothing(
    chromium, embedded, other_site, tmp_path, csrf_field
):
    path = tmp_path / "forged.png"
    path.write_bytes(png_bytes(50_000, seed=12))
    fields = [] if csrf_field is None else [("csrf_token", csrf_field)]
    other_site.form(embedded.url + "/api/upload", *fields)
    context = signed_in(chromium, embedded, java_script_enabled=False)
    page = context.new_page()
    before = len(all_records(embedded))
    try:
        page.goto(other_site.origin + "/")
        page.set_input_files("#file", str(path))
        page.click("#f button")
        page.wait_for_load_state()
        shot(page, f"csrf-refused-{'missing' if csrf_field is None else 'wrong'}")
        assert urlparse(page.url).path == "/api/upload"
        code = page.get_attribute("#error", "data-code")
        # The cookie went along (same site), and the missing or wrong token is what refused it.
        assert code == ("csrf_missing" if csrf_field is None else "csrf_invalid")
        assert len(all_records(embedded)) == before
        assert records_named(embedded, "forged.png") == []
    finally:
        context.close()


def test_a_legacy_form_elsewhere_posts_with_the_sessions_token_and_gets_sent_back(
    chromium, embedded, other_site, tmp_path
):
    """The form on another app carries the session's CSRF token (from the readable cookie, or
    POST /api/session) and a redirect to its own origin, which the gateway allows."""
    content = photo(400, 300)
    path = tmp_path / "legacy.jpg"
    path.write_bytes(content)
    context = signed_in(chromium, embedded, java_script_enabled=False)
    (csrf_cookie,) = [c for c in context.cookies() if c["name"] == f"{COOKIE}_csrf"]
    assert not csrf_cookie["httpOnly"]
    (session,) = [c for c in context.cookies() if c["name"] == COOKIE]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
    page = context.new_page()
    try:
        for target, expected in (
            (other_site.origin + "/thanks", "stored"),
            ("https://elsewhere.example/thanks", "invalid_redirect"),
        ):
            other_site.form(
                embedded.url + "/api/upload",
                ("csrf_token", csrf_cookie["value"]),
                ("redirect", target),
            )
            page.goto(other_site.origin + "/")
            page.set_input_files("#file", str(path))
            page.click("#f button")
            page.wait_for_load_state()
            if expected == "stored":
                assert page.url.startswith(other_site.origin + "/thanks?")
                shot(page, "legacy-form-sent-back")
                params = dict(parse_qsl(urlparse(page.url).query))
                assert params["status"] == "stored"
                assert requests.get(params["url"], timeout=30).content == content
                assert embedded.svc.records.get(params["mediaId"]).original_name == "legacy.jpg"
            else:  # not an allowed origin: a page from the gateway, nothing stored
                assert urlparse(page.url).path == "/api/upload"
                assert page.get_attribute("#error", "data-code") == "invalid_redirect"
        assert len(records_named(embedded, "legacy.jpg")) == 1
    finally:
        context.close()


# -- with JavaScript ---------------------------------------------------------------------------------
def padded_photo(path: Path, size: int, seed: int) -> Path:
    """A real JPEG (it decodes: processing makes its thumbnail) followed by filler up to size."""
    head = photo(640, 480)
    filler = hashlib.sha256(str(seed).encode()).digest() * (-(-(size - len(head)) // 32))
    path.write_bytes(head + filler[: size - len(head)])
    return path


def upload_page(context, stack):
    page = context.new_page()
    page.goto(stack.url + "/upload")
    page.wait_for_selector("html[data-enhanced=true]")
    return page


def choose_and_send(page, *paths: Path, project: str = "p1") -> None:
    page.fill("#project-id", project)
    page.set_input_files("#files", [str(p) for p in paths])
    page.click("#upload-form button[type=submit]")


def row(page, name: str) -> str:
    return f'#uploads li[data-file-name="{name}"]'


def test_three_files_upload_with_visible_progress_and_end_ready_with_thumbnails(
    chromium, embedded, tmp_path
):
    paths = [padded_photo(tmp_path / f"three-{i}.jpg", 3 * MiB + i, seed=i) for i in range(3)]
    context = signed_in(chromium, embedded)
    page = upload_page(context, embedded)
    try:
        shot(page, "js-1-before")
        throttle_uploads(page, 2 * MiB)
        choose_and_send(page, *paths)
        seen = set()
        page.wait_for_selector(f"{row(page, paths[0].name)}[data-state=uploading]")
        while len(seen) < 3 and page.get_attribute("body", "data-uploads") == "running":
            for path in paths:
                value = page.eval_on_selector(f"{row(page, path.name)} progress", "p => p.value")
                if 0 < value < 100:
                    seen.add(path.name)
        shot(page, "js-2-during")
        assert len(seen) >= 2  # several files show partial progress (tus runs three at once)
        for path in paths:
            page.wait_for_selector(
                f"{row(page, path.name)}[data-state=ready] img[data-role=thumbnail]", timeout=60_000
            )
        shot(page, "js-3-after")
        for path in paths:
            media_id = page.get_attribute(row(page, path.name), "data-media-id")
            record = embedded.svc.records.get(media_id)
            assert record.size == path.stat().st_size
            link = page.get_attribute(f"{row(page, path.name)} a[data-role=url]", "href")
            assert hashlib.sha256(
                requests.get(link, timeout=30).content
            ).hexdigest() == sha256_file(path)
    finally:
        context.close()


def progress_of(page, name: str) -> float:
    return page.eval_on_selector(f"{row(page, name)} progress", "p => p.value")


def wait_for_progress(page, name: str, at_least: float) -> None:
    page.wait_for_function(
        "([sel, min]) => { const p = document.querySelector(sel); return p && p.value >= min }",
        arg=[f"{row(page, name)} progress", at_least],
        timeout=60_000,
    )


def test_a_60_mb_upload_survives_the_browser_going_offline_and_is_stored_once(
    chromium, embedded, tmp_path
):
    path = padded_photo(tmp_path / "offline.jpg", 60_000_000, seed=60)
    context = signed_in(chromium, embedded)
    page = upload_page(context, embedded)
    try:
        throttle_uploads(page, 12 * MiB)
        before = tus_bytes_received(embedded)
        choose_and_send(page, path)
        wait_for_progress(page, path.name, 30)
        context.set_offline(True)
        page.wait_for_selector(f"{row(page, path.name)}[data-state=offline]")
        shot(page, "offline-1-waiting")
        page.wait_for_timeout(1500)
        assert progress_of(page, path.name) < 100
        context.set_offline(False)
        page.wait_for_selector(f"{row(page, path.name)}[data-state=ready]", timeout=120_000)
        shot(page, "offline-2-done")
        (record,) = records_named(embedded, path.name)
        assert record.size == path.stat().st_size
        media = {"url": page.get_attribute(f"{row(page, path.name)} a[data-role=url]", "href")}
        assert hashlib.sha256(stored_bytes(embedded, media)).hexdigest() == sha256_file(path)
        sent = tus_bytes_received(embedded) - before
        assert path.stat().st_size <= sent < 1.3 * path.stat().st_size  # resumed, not restarted
    finally:
        context.close()


def test_a_reload_mid_upload_resumes_from_what_the_gateway_holds(chromium, embedded, tmp_path):
    path = padded_photo(tmp_path / "reload.jpg", 60_000_000, seed=61)
    context = signed_in(chromium, embedded)
    page = upload_page(context, embedded)
    try:
        throttle_uploads(page, 12 * MiB)
        before = tus_bytes_received(embedded)
        choose_and_send(page, path)
        wait_for_progress(page, path.name, 50)
        page.reload()
        page.wait_for_selector("html[data-enhanced=true]")
        # The outbox (IndexedDB) kept the file and its tus URL: it goes on by itself.
        page.wait_for_selector(row(page, path.name))
        shot(page, "reload-1-after-reload")
        sent_before_reload = tus_bytes_received(embedded) - before
        page.wait_for_selector(
            f"{row(page, path.name)}[data-state=stored], {row(page, path.name)}[data-state=processing], {row(page, path.name)}[data-state=ready]",
            timeout=120_000,
        )
        shot(page, "reload-2-done")
        (record,) = records_named(embedded, path.name)
        assert record.size == path.stat().st_size
        sent = tus_bytes_received(embedded) - before
        # A restart would send the whole file again on top of what went before the reload.
        assert sent_before_reload >= 0.4 * path.stat().st_size
        assert sent < 1.2 * path.stat().st_size
    finally:
        context.close()


def test_big_files_go_direct_to_s3_through_uppy_small_ones_over_tus(
    chromium, on_s3, s3_proxy, tmp_path
):
    big = padded_photo(tmp_path / "direct.jpg", 3 * 5 * MiB + 1234, seed=70)
    small = padded_photo(tmp_path / "small.jpg", 2 * MiB, seed=71)
    context = signed_in(chromium, on_s3)
    page = upload_page(context, on_s3)
    seen_before = len(s3_proxy.requests())
    try:
        choose_and_send(page, big, small)
        for path in (big, small):
            page.wait_for_selector(f"{row(page, path.name)}[data-state=stored]", timeout=60_000)
        shot(page, "direct-s3-done")
        records = {p.name: records_named(on_s3, p.name) for p in (big, small)}
        for path in (big, small):
            (record,) = records[path.name]
            assert record.status.value == "stored" and record.size == path.stat().st_size
            assert on_s3.svc.storage.direct.sha256(record.s3_key) == sha256_file(path)
        (direct,) = records[big.name]
        assert direct.upload.protocol == "direct" and direct.upload.method == "multipart"
        assert records[small.name][0].upload.protocol == "tus"
        # The browser itself sent the parts to S3, each part signed by the gateway.
        sent = s3_proxy.requests()[seen_before:]
        parts = [r for r in sent if r.method == "PUT" and "partNumber" in r.query]
        assert sorted(int(r.query["partNumber"][0]) for r in parts) == [1, 2, 3, 4]
        assert all(r.headers.get("origin") == on_s3.url for r in parts)
        pending = on_s3.svc.storage.listing.pending_uploads()
        assert [u for u in pending if u.key == direct.s3_key] == []
        assert tus_bytes_received(on_s3, direct.media_id) == 0
    finally:
        context.close()


def test_the_readmes_curl_session_works_through_nginx(embedded, tmp_path):
    """docs/browsers.md: a session from a bearer token, then the cookie and its CSRF token."""
    jar = tmp_path / "jar"
    opened = embedded.curl("-c", str(jar), "-X", "POST", path="/api/session")
    assert opened.status == 201, opened.body
    csrf_token = opened.json()["csrfToken"]
    photo_path = tmp_path / "cat.jpg"
    photo_path.write_bytes(photo(320, 240))
    form = ["-b", str(jar), "-F", "projectId=p1", "-F", f"file=@{photo_path}"]
    refused = embedded.curl(*form, token=None)
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf_missing"
    stored = embedded.curl(*form, token=None, headers={"X-CSRF-TOKEN": csrf_token})
    assert stored.status == 201, stored.body
    assert stored.json()["size"] == photo_path.stat().st_size


AXE = ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"


def accessibility_violations(page) -> list[str]:
    """axe-core's serious and critical findings (WCAG 2.1 A and AA rules) on the page as it is."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}))
            .violations.filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => `${v.id}: ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)"""
    )
    return list(found)


def test_every_page_passes_axe_core_with_no_serious_finding(chromium, embedded, tmp_path):
    # bypass_csp: only to inject axe itself; the pages are audited as served.
    context = chromium.new_context(bypass_csp=True)
    page = context.new_page()
    path = tmp_path / "a11y.jpg"
    path.write_bytes(photo(320, 240))
    try:
        page.goto(embedded.url + "/upload")
        assert accessibility_violations(page) == [], "sign-in page"
        page.fill("#token", embedded.token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("html[data-enhanced=true]")
        assert accessibility_violations(page) == [], "upload page"
        choose_and_send(page, path)
        page.wait_for_selector(f"{row(page, path.name)}[data-state=ready] img", timeout=60_000)
        assert accessibility_violations(page) == [], "upload page with a finished upload"
        media_id = page.get_attribute(row(page, path.name), "data-media-id")
        page.goto(f"{embedded.url}/upload/result?mediaId={media_id}")
        assert accessibility_violations(page) == [], "result page"
        page.goto(f"{embedded.url}/upload/result?error=too_large")
        assert accessibility_violations(page) == [], "error page"
        # The audit does find what it should: an input without a label.
        page.evaluate("document.querySelector('main').append(document.createElement('input'))")
        assert any(v.startswith("label:") for v in accessibility_violations(page))
    finally:
        context.close()


def test_cancelling_an_upload_ends_it_at_the_gateway_and_leaves_nothing(
    chromium, embedded, tmp_path
):
    path = padded_photo(tmp_path / "cancel.jpg", 30 * MiB, seed=80)
    context = signed_in(chromium, embedded)
    page = upload_page(context, embedded)
    try:
        throttle_uploads(page, 6 * MiB)
        choose_and_send(page, path)
        wait_for_progress(page, path.name, 20)
        (pending,) = records_named(embedded, path.name)
        assert pending.status.value == "pending"
        page.click(f"{row(page, path.name)} button[data-role=cancel]")
        page.wait_for_selector(f"{row(page, path.name)}[data-state=cancelled]")
        assert page.is_hidden(f"{row(page, path.name)} button[data-role=cancel]")
        # tus termination (retried while the aborted PATCH still holds its lease).
        record = poll(
            lambda: (
                (r := embedded.svc.records.get(pending.media_id)).status.value == "aborted" and r
            ),
            timeout=30,
        )
        assert record.reason == "Terminated by the client."

        # The status moves first (so a racing completion cannot store the upload), the parts go
        # right after it, in the request that ended it: what is left is looked at until then.
        def left() -> list[str]:
            return [str(p) for p in embedded.media_root.rglob("*") if pending.media_id in str(p)]

        assert poll(lambda: not left(), timeout=10), left()
        shot(page, "cancelled")
    finally:
        context.close()


# -- recording audio --------------------------------------------------------------------------------
# Processing is off on this stack: the test writes what the audio worker (issue 23's server side)
# will write, a ready record with a PNG waveform variant.
@pytest.fixture(scope="module")
def audio_stack(tmp_path_factory):
    with gateway_stack(
        tmp_path_factory.mktemp("browser-audio"),
        mode="embedded",
        GATEWAY_ALLOWED_TYPES="image/*,audio/*,video/webm",
        GATEWAY_PROCESSING="off",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def recording_stack(tmp_path_factory):
    """Processing on: the Record test runs a real worker over what it recorded."""
    with gateway_stack(
        tmp_path_factory.mktemp("browser-recording"),
        mode="embedded",
        GATEWAY_ALLOWED_TYPES="image/*,audio/*",
        GATEWAY_PROCESSING="on",
    ) as stack:
        yield stack


def audio_track(data: bytes) -> dict:
    """What PyAV finds in a recording: container, streams, the first audio track and its peak."""
    import av

    with av.open(io.BytesIO(data)) as container:
        (stream,) = container.streams.audio
        mono = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        samples, peak = 0, 0.0
        for frame in container.decode(stream):
            samples += frame.samples
            for out in mono.resample(frame):
                values = memoryview(bytes(out.planes[0])).cast("f")[: out.samples]
                peak = max([peak, *map(abs, values)])
        return {
            "container": container.format.name,
            "videoStreams": len(container.streams.video),
            "codec": stream.codec_context.codec.canonical_name,
            "seconds": samples / stream.rate,
            "peak": peak,
        }


def test_the_record_button_records_the_microphone_and_uploads_the_recording(
    chromium, recording_stack
):
    audio_stack = recording_stack
    # bypass_csp: only to inject axe-core while recording (the player test keeps the CSP).
    context = signed_in(chromium, audio_stack, permissions=["microphone"], bypass_csp=True)
    page = upload_page(context, audio_stack)
    try:
        page.wait_for_selector("#recorder:not([hidden])")
        assert page.is_hidden("#record-level") and page.is_hidden("#record-time")
        page.fill("#project-id", "p1")
        page.click("#record")
        page.wait_for_selector("#recorder[data-state=recording]")
        assert page.get_attribute("#recorder", "data-mime-type") == "audio/webm;codecs=opus"
        assert page.text_content("#record") == "Stop"
        # The level follows the beep; the duration counts up.
        page.wait_for_function("() => document.querySelector('#record-level').value > 0.05")
        page.wait_for_function(
            "() => document.querySelector('#record-time').textContent === '0:02'"
        )
        shot(page, "record-1-recording")
        assert accessibility_violations(page) == [], "upload page while recording"
        page.click("#record")
        page.wait_for_selector("#recorder[data-state=idle]")
        assert page.text_content("#record") == "Record" and page.is_hidden("#record-level")
        name = page.get_attribute("#uploads li", "data-file-name")
        assert re.fullmatch(r"recording-\d{8}-\d{6}\.webm", name)
        page.wait_for_selector(f"{row(page, name)}[data-state=stored]", timeout=60_000)
        shot(page, "record-2-stored")
        (record,) = records_named(audio_stack, name)
        data = (audio_stack.media_root / record.s3_key).read_bytes()
        assert record.size == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
        assert record.upload is None  # a form post: the outbox sends files up to 1 MiB in one
        found = audio_track(data)
        assert (found["container"], found["videoStreams"], found["codec"]) == (
            "matroska,webm", 0, "opus")  # fmt: skip
        assert 1.9 <= found["seconds"] <= 4.0
        assert found["peak"] > 0.05  # the beep, not silence
        # MediaRecorder's WebM lists only an audio track in its first bytes: audio, not video.
        assert (record.mime_type, record.file_type) == ("audio/webm", "audio")
        worker = audio_stack.start_worker()
        try:
            deadline = time.monotonic() + 90
            while record.status.value != "ready" and time.monotonic() < deadline:
                assert record.status.value in ("stored", "processing"), record.reason
                time.sleep(0.2)
                record = audio_stack.svc.records.get(record.media_id)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert record.status.value == "ready"
        assert {"peaks", "waveform"} <= {variant.name for variant in record.variants}
    finally:
        context.close()


def test_ready_audio_shows_a_player_and_its_waveform(chromium, audio_stack, tmp_path):
    import wave

    from gateway.media.lifecycle import Status
    from gateway.media.records import VariantInfo
    from gateway.processing.pipeline import variant_key

    path = tmp_path / "field.wav"
    with wave.open(str(path), "wb") as out:  # 3 s of 16-bit silence at 8 kHz
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000 * 3)
    context = signed_in(chromium, audio_stack)
    page = upload_page(context, audio_stack)
    try:
        choose_and_send(page, path)
        page.wait_for_selector(f"{row(page, path.name)}[data-state=stored]", timeout=60_000)
        assert page.query_selector(f"{row(page, path.name)} audio") is None  # not ready yet
        (record,) = records_named(audio_stack, path.name)
        assert record.mime_type.startswith("audio/")
        # What the audio worker writes: a PNG waveform beside the file, and the record ready.
        waveform = png(400, 60, mode="RGB")
        key = variant_key(record.s3_key, "waveform")
        writer = audio_stack.svc.store.open_writer(key, content_type="image/png", metadata={})
        writer.write(waveform)
        writer.commit(sha256=hashlib.sha256(waveform).hexdigest())
        variant = VariantInfo("waveform", key, "image/png", 400, 60, len(waveform))
        ready = record.evolve(status=Status.READY, variants=[variant])
        assert audio_stack.svc.records.update(ready, expected=record) is not None
        player = f"{row(page, path.name)}[data-state=ready] audio[data-role=player]"
        page.wait_for_selector(player, timeout=30_000)
        # The browser loads it (the page's CSP admits media) and reads its length.
        duration = page.wait_for_function(
            "sel => { const a = document.querySelector(sel); return a.duration > 0 && a.duration }",
            arg=player,
            timeout=30_000,
        ).json_value()
        assert duration == pytest.approx(3.0, abs=0.05)
        image = f"{row(page, path.name)} img[data-role=waveform]"
        page.wait_for_function(
            "sel => document.querySelector(sel)?.naturalWidth === 400", arg=image
        )
        assert page.get_attribute(image, "alt") == f"Waveform of {path.name}"
        assert page.query_selector(f"{row(page, path.name)} img[data-role=thumbnail]") is None
        shot(page, "record-3-ready-audio")
    finally:
        context.close()
