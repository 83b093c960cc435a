"""The browser outbox (gateway/web/outbox) through the upload page, in a real Chromium with a
persistent profile (IndexedDB and the service worker kept across a browser restart), against
gunicorn. The browser reaches gunicorn through a TCP relay (tcpproxy.py) that can cut the
network for real (the service worker's requests too) and throttle uploads. (Not through nginx: it
names its own port in the URLs it forwards, so tus's Location would skip the relay.)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from tcpproxy import TcpProxy

from e2e_harness import ROOT, MiB, ensure_chromium, gateway_stack, poll
from support import png_bytes, record_ids

pytestmark = pytest.mark.slow
ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def stack(tmp_path_factory, app_server):
    with gateway_stack(
        tmp_path_factory.mktemp("outbox-browser"),
        GATEWAY_PROCESSING="off",
        GATEWAY_CORS_ORIGINS=app_server.url,  # the app's page, on its own origin
    ) as s:
        yield s


@pytest.fixture
def proxy(stack):
    relay = TcpProxy(stack.gateway_url).start()
    yield relay
    relay.stop()


@contextlib.contextmanager
def browser(playwright, profile: Path, *, offline: bool = False, **options):
    """Chromium on ``profile``: closing it ends the browser (as a user quitting it)."""
    options.setdefault("args", ARGS)
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=ensure_chromium(), headless=True, **options
    )
    context.set_offline(offline)
    try:
        yield context
    finally:
        context.close()


def sign_in(context, stack, url: str):
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(url + "/upload")
    page.fill("#token", stack.token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("html[data-enhanced=true]")
    return page


SHELL_CACHED = """async () => {
  for (const name of await caches.keys()) {
    if (!name.startsWith('upload-pages-')) continue
    if (await (await caches.open(name)).match('/upload', { ignoreSearch: true })) return true
  }
  return false
}"""


def install_app_shell(page) -> None:
    # (page.evaluate, not wait_for_function: the page's CSP forbids the eval that one uses)
    assert poll(lambda: page.evaluate("() => navigator.serviceWorker.controller !== null"), 30)
    assert poll(lambda: page.evaluate(SHELL_CACHED), timeout=30)


def row(name: str) -> str:
    return f'#uploads li[data-file-name="{name}"]'


def choose_and_send(page, *paths: Path, project: str = "p1") -> None:
    page.fill("#project-id", project)
    page.set_input_files("#files", [str(p) for p in paths])
    page.click("#upload-form button[type=submit]")


def sample(path: Path, size: int, seed: int) -> Path:
    """A PNG (sniffed as an image) padded with filler to ``size`` bytes."""
    head = png_bytes(4096)
    filler = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(head + filler[: size - len(head)])
    return path


QUEUE = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open('gateway-outbox')
  open.onerror = () => reject(open.error)
  open.onsuccess = () => {
    const all = open.result.transaction('items').objectStore('items').getAll()
    all.onsuccess = () => resolve(all.result.map((i) => [i.state, i.files[0].transport]))
  }
})"""


def all_done(page) -> list | None:
    """The queue's (state, transport) pairs once every item is done."""
    items = page.evaluate(QUEUE)
    return items if items and all(state == "done" for state, _ in items) else None


def records_named(stack, name: str) -> list:
    records = [stack.svc.records.get(media_id) for media_id in record_ids(stack.svc.records)]
    return [r for r in records if r.original_name == name]


def stored_content(stack, record) -> bytes:
    answer = requests.get(
        f"{stack.url}/api/media/{record.media_id}", headers=stack.auth, timeout=30
    )
    answer.raise_for_status()
    url = answer.json()["url"]
    path = url.split("://", 1)[-1].split("/", 1)[1]
    content = requests.get(f"{stack.url}/{path}", timeout=30)
    content.raise_for_status()
    return content.content


def test_files_queued_offline_survive_a_reload_and_a_browser_restart_and_are_stored_once(
    playwright, stack, proxy, tmp_path
):
    profile = tmp_path / "profile"
    # Small files go in a form post each, the two of 3 MiB over tus.
    sizes = [20_000, 300_000, 900_000, 3 * MiB, 3 * MiB + 7]
    paths = [sample(tmp_path / f"queued-{i}.png", size, seed=i) for i, size in enumerate(sizes)]

    with browser(playwright, profile) as context:  # a first visit installs the app shell
        page = sign_in(context, stack, proxy.url)
        install_app_shell(page)

    proxy.cut()  # no network at all, for the page and for its service worker
    sent = proxy.sent
    with browser(playwright, profile, offline=True) as context:
        page = context.pages[0]
        page.goto(proxy.url + "/upload")  # from the app-shell cache
        page.wait_for_selector("html[data-enhanced=true]")
        choose_and_send(page, *paths)
        for path in paths:
            page.wait_for_selector(f"{row(path.name)}[data-state=queued]", timeout=30_000)
        assert "waiting for connection" in page.inner_text(row(paths[0].name))
        page.reload()  # the queue is in IndexedDB, not in the page
        page.wait_for_selector("html[data-enhanced=true]")
        for path in paths:
            page.wait_for_selector(row(path.name), timeout=10_000)
        assert page.locator("#uploads li").count() == len(paths)
        assert page.get_attribute("#storage", "data-persisted") in ("true", "false")
        assert "used of" in page.inner_text("#storage")
    assert proxy.sent == sent  # nothing reached the gateway
    assert all(not records_named(stack, p.name) for p in paths)

    proxy.restore()
    with browser(playwright, profile) as context:  # the browser started again, online
        page = context.pages[0]
        page.goto(proxy.url + "/upload")  # (Background Sync may have begun before it opened)
        items = poll(lambda: all_done(page), timeout=90)
    assert sorted(items) == sorted([["done", "form"]] * 3 + [["done", "tus"]] * 2)
    for path in paths:
        (record,) = records_named(stack, path.name)  # stored exactly once
        assert record.size == path.stat().st_size
        assert stored_content(stack, record) == path.read_bytes()


def progress_of(page, name: str) -> float:
    bar = page.query_selector(f"{row(name)} progress")
    return bar.evaluate("p => p.value") if bar else 0


def test_a_large_file_dropped_mid_upload_resumes_from_the_gateways_offset_and_is_stored_once(
    playwright, stack, proxy, tmp_path
):
    path = sample(tmp_path / "large.png", 24 * MiB, seed=99)
    size = path.stat().st_size
    proxy.rate = 2 * MiB  # about 12 s for the file
    patches: list[int] = []  # the Upload-Offset of each PATCH the page sent
    with browser(playwright, tmp_path / "profile") as context:
        page = sign_in(context, stack, proxy.url)
        page.on(
            "request",
            lambda r: r.method == "PATCH" and patches.append(int(r.headers["upload-offset"])),
        )
        started = proxy.sent
        choose_and_send(page, path)
        assert poll(lambda: progress_of(page, path.name) >= 40, timeout=60)
        proxy.drop()  # the connection lost mid-body, as a network drop loses it
        dropped_at = proxy.sent - started
        page.wait_for_selector(f"{row(path.name)}[data-state=stored]", timeout=90_000)
    (record,) = records_named(stack, path.name)  # stored once
    assert record.size == size
    assert stored_content(stack, record) == path.read_bytes()
    # The last PATCH starts where the gateway stood (part of what reached it before the drop),
    # not at 0; what went over the wire is the file once plus what the drop lost.
    assert patches[0] == 0
    assert 0 < patches[-1] <= dropped_at
    assert size < proxy.sent - started < 1.3 * size


# -- a chain: a step before the upload, whose answer feeds the upload and the step after it -------
# The chains run in the app's own page, on another origin than the gateway (the gateway's page
# lets its script reach the gateway only): the app bundles the outbox library as it would from
# npm, and the gateway answers CORS for the app's origin (GATEWAY_CORS_ORIGINS).
APP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>The app</title>
<script type="application/json" id="config">%s</script>
<script type="module">
import { createOutbox } from '/outbox.js'
const config = JSON.parse(document.getElementById('config').textContent)
const outbox = createOutbox({ gateway: config.gateway, token: () => config.token,
                              backoffSeconds: 0.5, maxBackoffSeconds: 1 })
window.appOutbox = outbox
outbox.start()
document.documentElement.dataset.ready = 'true'
</script></head><body><h1>The app</h1></body></html>"""


class AppApi:
    """The app on its own origin: its page (/app) with the outbox library (/outbox.js), and its
    API: POST /attachments answers a new {"AttachID"}, PATCH /attachments/<id> answers {}; CORS
    for any origin. Every API request is recorded, also one it does not answer: ``refuse_create``
    (status, body) refuses step 1; a method in ``down`` is dropped unanswered (the API down)."""

    def __init__(self, library: bytes) -> None:
        self.library = library
        self.page_config: dict = {}
        self.reset()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Methods", "POST, PATCH")
                self.send_header("Access-Control-Allow-Headers", "content-type, idempotency-key")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status: int, body: dict | None = None) -> None:
                self._send(status, json.dumps(body or {}).encode(), "application/json")

            def do_OPTIONS(self) -> None:
                self._answer(204)

            def do_GET(self) -> None:
                if self.path == "/outbox.js":
                    self._send(200, api.library, "text/javascript")
                else:
                    page = APP_PAGE % json.dumps(api.page_config).replace("<", "\\u003c")
                    self._send(200, page.encode(), "text/html; charset=utf-8")

            def _record(self) -> dict | None:
                """The request, recorded; None when the API is down for it (no answer)."""
                length = int(self.headers.get("Content-Length") or 0)
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "key": self.headers.get("Idempotency-Key"),
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(self.rfile.read(length) or b"null"),
                    "answered": self.command not in api.down,
                }
                api.requests.append(seen)
                if seen["answered"]:
                    return seen
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return None

            def do_POST(self) -> None:
                if self._record() is None:
                    return
                if api.refuse_create is not None:
                    self._answer(*api.refuse_create)
                    return
                api.next_id += 1
                self._answer(201, {"AttachID": api.next_id - 1})

            def do_PATCH(self) -> None:
                if self._record() is not None:
                    self._answer(200, {})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        self.requests: list[dict] = []
        self.next_id = 123
        self.refuse_create: tuple[int, dict] | None = None
        self.down: set[str] = set()

    def answered(self, method: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["answered"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def open_app(context, app: AppApi, gateway_url: str, token: str):
    """The app's page, its outbox started (``window.appOutbox``)."""
    app.page_config = {"gateway": gateway_url, "token": token}
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(app.url + "/app")
    page.wait_for_selector("html[data-ready=true]")
    return page


QUEUE_CHAIN = """async ([app, name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0))
  const item = await window.appOutbox.add({
    before: [{ name: 'create', method: 'POST', url: `${app}/attachments`,
               body: '{"title": "north wall"}', capture: { attachId: '/AttachID' } }],
    upload: { project: 'p1', fields: { attachId: '{{steps.create.attachId}}' },
              files: [{ name, type: 'image/png', blob: new Blob([bytes], { type: 'image/png' }) }] },
    after: [{ name: 'update', method: 'PATCH', url: `${app}/attachments/{{steps.create.attachId}}`,
              body: '{"key": "{{s3Key}}", "mediaId": "{{mediaId}}", "sha256": "{{sha256}}"}' }],
  })
  window.appOutbox.sync()
  return item.id
}"""
ITEM = "async (id) => await window.appOutbox.get(id)"


def queue_chain(page, app: AppApi, content: bytes, name: str) -> str:
    return page.evaluate(QUEUE_CHAIN, [app.url, name, base64.b64encode(content).decode()])


def item_in(page, item_id: str, *states: str) -> dict | None:
    item = page.evaluate(ITEM, item_id)
    return item if item and item["state"] in states else None


def gateway_requests(page, gateway_url: str, path: str) -> list:
    """The requests (not preflights) the page sends to ``path`` on the gateway, from now on."""
    seen: list = []
    page.on(
        "request",
        lambda r: r.url.startswith(gateway_url + path) and r.method != "OPTIONS" and seen.append(r),
    )
    return seen


def media_files(stack) -> list[Path]:
    return [p for p in stack.media_root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> bytes:
    """The outbox library as an app bundles it (one ES module with idb and tus-js-client)."""
    web = ROOT / "gateway" / "web"
    out = tmp_path_factory.mktemp("app") / "outbox.js"
    subprocess.run(
        [web / "node_modules" / ".bin" / "esbuild", web / "outbox" / "src" / "index.js",
         "--bundle", "--format=esm", "--target=es2020", f"--outfile={out}", "--log-level=warning"],
        check=True, cwd=web,
    )  # fmt: skip
    return out.read_bytes()


@pytest.fixture(scope="module")
def app_server(library):
    server = AppApi(library)
    yield server
    server.close()


@pytest.fixture
def app(app_server):
    app_server.reset()
    return app_server


def test_a_chain_queued_offline_runs_each_step_once_after_a_restart_with_its_captures(
    playwright, stack, proxy, app, tmp_path
):
    content = sample(tmp_path / "scan.png", 50_000, seed=7).read_bytes()
    profile = tmp_path / "profile"
    with browser(playwright, profile) as context:
        page = open_app(context, app, proxy.url, stack.token)
        proxy.cut()
        context.set_offline(True)
        # An unknown placeholder is refused when queued: nothing is queued.
        refused = page.evaluate(
            """async () => { try { await window.appOutbox.add({ upload: { project: 'p1',
               fields: { a: '{{steps.nope.id}}' }, files: [{ name: 'x', blob: new Blob(['x']) }] } })
               } catch (e) { return e.message } }"""
        )
        assert "no step is named" in refused
        item_id = queue_chain(page, app, content, "scan.png")
        queued = page.evaluate("async () => (await window.appOutbox.list()).map((i) => i.state)")
        assert queued == ["queued"]
        key = page.evaluate(ITEM, item_id)["key"]
    assert app.requests == []
    assert records_named(stack, "scan.png") == []
    proxy.restore()
    with browser(playwright, profile) as context:  # the browser started again, online
        page = open_app(context, app, proxy.url, stack.token)
        assert poll(lambda: item_in(page, item_id, "done"), timeout=60)
    (record,) = records_named(stack, "scan.png")
    assert stored_content(stack, record) == content
    assert record.metadata["attachId"] == "123"  # step 1's answer, in the upload's fields
    media = requests.get(
        f"{stack.url}/api/media/{record.media_id}", headers=stack.auth, timeout=30
    ).json()
    create, update = app.requests  # each step once
    assert (create["method"], create["path"], create["key"]) == (
        "POST", "/attachments", f"{key}.step0")  # fmt: skip
    assert create["body"] == {"title": "north wall"}
    assert (update["method"], update["path"], update["key"]) == (
        "PATCH", "/attachments/123", f"{key}.step1")  # fmt: skip
    assert update["body"] == {
        "key": media["s3Key"], "mediaId": record.media_id, "sha256": media["sha256"]
    }  # fmt: skip
    assert create["authorization"] is None and update["authorization"] is None


def test_the_app_api_down_for_the_step_after_the_upload_repeats_the_step_not_the_upload(
    playwright, stack, proxy, app, tmp_path
):
    content = sample(tmp_path / "down.png", 40_000, seed=11).read_bytes()
    app.down = {"PATCH"}
    with browser(playwright, tmp_path / "profile") as context:
        page = open_app(context, app, proxy.url, stack.token)
        uploads = gateway_requests(page, proxy.url, "/api/upload")
        item_id = queue_chain(page, app, content, "down.png")
        # Step 3 tried and unanswered, again and again: the item waits, stored.
        assert poll(lambda: len(app.requests) >= 4, timeout=60)  # create and 3 tries of update
        waiting = page.evaluate(ITEM, item_id)
        assert waiting["state"] == "stored"
        assert [s["done"] for s in waiting["steps"]] == [True, False]
        assert "step update PATCH" in waiting["lastError"]
        assert len(records_named(stack, "down.png")) == 1
        app.down = set()  # the API is back
        done = poll(lambda: item_in(page, item_id, "done"), timeout=30)
        assert done
    assert len(uploads) == 1  # the upload was sent once
    (record,) = records_named(stack, "down.png")
    assert stored_content(stack, record) == content
    assert [r["method"] for r in app.requests if r["answered"]] == ["POST", "PATCH"]
    (update,) = app.answered("PATCH")
    tries = [r for r in app.requests if r["method"] == "PATCH"]
    assert len(tries) >= 4
    assert {r["key"] for r in tries} == {f"{done['key']}.step1"}  # the same key every time
    assert update["path"] == "/attachments/123"
    assert update["body"]["key"] == record.s3_key


def test_a_permanent_refusal_at_the_first_step_fails_the_item_with_the_apps_answer_and_uploads_nothing(
    playwright, stack, proxy, app, tmp_path
):
    content = sample(tmp_path / "refused.png", 30_000, seed=12).read_bytes()
    app.refuse_create = (422, {"error": "title is required"})
    before = media_files(stack)
    with browser(playwright, tmp_path / "profile") as context:
        page = open_app(context, app, proxy.url, stack.token)
        sent = gateway_requests(page, proxy.url, "/api/")
        item_id = queue_chain(page, app, content, "refused.png")
        failed = poll(lambda: item_in(page, item_id, "failed"), timeout=30)
        assert failed
        assert failed["failedStep"] == "create"
        assert json.loads(failed["answer"]) == {"error": "title is required"}  # the app's answer
        assert failed["lastError"].startswith(f"step create POST {app.url}/attachments: 422: ")
        assert [s["done"] for s in failed["steps"]] == [False, False]
        # Failed is final: no later attempt (a second sync sends nothing).
        assert page.evaluate("async () => await window.appOutbox.sync({ now: true })") == 0
    assert [(r["method"], r["path"]) for r in app.requests] == [("POST", "/attachments")]
    assert sent == []  # nothing went to the gateway
    assert records_named(stack, "refused.png") == []
    assert media_files(stack) == before


# -- a recording made offline ---------------------------------------------------------------------
MIC = [*ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
QUEUED_BYTES = """async () => {
  const [item] = await window.uploadOutbox.list()
  const blob = await window.uploadOutbox.blob(item.id, 0)
  const bytes = new Uint8Array(await blob.arrayBuffer())
  let text = ''
  for (const b of bytes) text += String.fromCharCode(b)
  return [item.files[0].name, item.files[0].type, btoa(text)]
}"""


def test_a_recording_made_offline_survives_a_restart_and_is_uploaded_once_online(
    playwright, stack, proxy, tmp_path
):
    profile = tmp_path / "profile"
    mic = {"args": MIC, "permissions": ["microphone"]}
    with browser(playwright, profile, **mic) as context:  # a first visit installs the app shell
        install_app_shell(sign_in(context, stack, proxy.url))
    proxy.cut()
    sent = proxy.sent
    with browser(playwright, profile, offline=True, **mic) as context:
        page = context.pages[0]
        page.goto(proxy.url + "/upload")  # from the app-shell cache
        page.wait_for_selector("#recorder:not([hidden])")
        page.fill("#project-id", "p1")
        page.click("#record")
        page.wait_for_selector("#recorder[data-state=recording]")
        page.wait_for_function(
            "() => document.querySelector('#record-time').textContent === '0:02'"
        )
        page.click("#record")
        page.wait_for_selector("#recorder[data-state=idle]")
        name = page.get_attribute("#uploads li", "data-file-name")
        page.wait_for_selector(f"{row(name)}[data-state=queued]", timeout=30_000)
        queued_name, queued_type, data = page.evaluate(QUEUED_BYTES)
    queued = base64.b64decode(data)
    assert queued_name == name and queued_type.startswith("audio/webm")
    assert queued[:4] == b"\x1a\x45\xdf\xa3" and len(queued) > 1000  # WebM (EBML), not empty
    assert proxy.sent == sent and records_named(stack, name) == []
    proxy.restore()
    with browser(playwright, profile, **mic) as context:  # the browser started again, online
        page = context.pages[0]
        page.goto(proxy.url + "/upload")
        assert poll(lambda: all_done(page), timeout=60)
    (record,) = records_named(stack, name)  # uploaded once
    assert stored_content(stack, record) == queued  # the bytes the page kept in IndexedDB
    assert (record.mime_type, record.file_type) == ("audio/webm", "audio")


# -- the result view ----------------------------------------------------------------------------------
def test_the_result_view_polls_with_script_and_says_offline_instead_of_an_error_page(
    playwright, stack, proxy, tmp_path
):
    upload = requests.post(
        stack.url + "/api/upload",
        headers=stack.auth,
        data={"projectId": "p1"},
        files={"file": ("result.png", png_bytes(4096), "image/png")},
        timeout=30,
    )
    media_id = upload.json()["files"][0]["mediaId"]  # processing is off: it stays "stored"
    result = f"{proxy.url}/upload/result?mediaId={media_id}"
    with browser(playwright, tmp_path / "profile") as context:
        page = sign_in(context, stack, proxy.url)
        install_app_shell(page)
        page.goto(result)
        page.wait_for_selector("html[data-enhanced=true]")
        # With script the refresh is inert (inside <noscript>): the script polls instead.
        assert page.evaluate("() => document.querySelector('meta[http-equiv=refresh]')") is None
        assert page.is_hidden("#connection")
        proxy.cut()
        context.set_offline(True)
        page.wait_for_selector("#connection:not([hidden])")
        assert "Offline, will update" in page.inner_text("#connection")
        page.reload()  # offline: the copy of the last visit, not the browser's error page
        page.wait_for_selector("html[data-enhanced=true]")
        assert page.get_attribute(f'#results li[data-media-id="{media_id}"]', "data-state")
        page.wait_for_selector("#connection:not([hidden])", timeout=15_000)
        proxy.restore()
        context.set_offline(False)
        page.wait_for_selector("#connection", state="hidden", timeout=15_000)
        assert page.get_attribute("body", "data-connection") == "online"
