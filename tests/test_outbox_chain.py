"""Linked chains in the outbox: a step before the upload whose answer feeds the upload and the
steps after it. Against a small "app API" served here (it answers the create step with a new id,
honours Idempotency-Key as an app should, and records every request) and the gateway app served
in this process (werkzeug's threaded server, local storage, as in test_outbox_client.py). The
``outbox`` command runs as its own process where it is SIGKILLed."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import requests
from werkzeug.serving import make_server

from gateway import create_app
from outbox import chain
from outbox.chain import StepSpec
from outbox.errors import InvalidItem
from outbox.report import JsonLines
from outbox.store import Incoming, Outbox, State
from outbox.sync import Syncer
from outbox.transport import GatewayClient

from conftest import init_stores, make_settings
from scripted_server import ScriptedServer
from support import ROOT, png_bytes

KiB = 1024
SCHEMA = json.loads((ROOT / "docs" / "chain.schema.json").read_text())
FIRST_ID = 123


# -- the app's own API ------------------------------------------------------------------------------
class AppApi:
    """``POST /api/attachments`` creates a record and answers ``{"AttachID": n}`` (201);
    ``PATCH /api/attachments/<n>`` updates it (200). A replayed Idempotency-Key gets the first
    answer and changes nothing. ``refuse``: (status, body) answered to every create instead.
    ``gate``: asked before each request is handled (the lockstep of the SIGKILL test)."""

    def __init__(self, *, port: int = 0, refuse: tuple[int, bytes] | None = None, gate=None):
        self.got: list[dict] = []  # every request handled: method, path, headers, json
        self.records: dict[int, dict] = {}
        self.answers: dict[str, tuple[int, bytes]] = {}  # by Idempotency-Key
        self.refuse = refuse
        self.gate = gate
        self._start(port)

    def _start(self, port: int) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if api.gate is not None and not api.gate.enter():
                    self.close_connection = True  # dropped: never handled, never answered
                    return
                status, payload = api.handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        self.got.append({"method": method, "path": path, "headers": headers,
                         "json": json.loads(body) if body else None})  # fmt: skip
        key = headers.get("Idempotency-Key", "")
        if key in self.answers:
            return self.answers[key]
        path = path.partition("?")[0]
        if method == "POST" and path == "/api/attachments":
            if self.refuse:
                return self.refuse
            new = FIRST_ID + len(self.records)
            self.records[new] = {"created": json.loads(body)}
            answer = (201, json.dumps({"AttachID": new, "status": "draft"}).encode())
        elif (found := re.fullmatch(r"/api/attachments/(\d+)", path)) and method == "PATCH":
            record = self.records.get(int(found.group(1)))
            if record is None:
                return 404, b'{"error": "no such attachment"}'
            record["updated"] = json.loads(body)
            answer = (200, b'{"ok": true}')
        else:
            return 404, b'{"error": "no such route"}'
        self.answers[key] = answer
        return answer

    def requests(self, method: str) -> list[dict]:
        return [g for g in self.got if g["method"] == method]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        """Back on the same port, with the same records (the API was down, not reset)."""
        self._start(self.port)


class Gate:
    """Lockstep for requests: ``allow(n)`` lets the next n through; the one after waits until
    ``drop()`` (it is then never handled) or another ``allow``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.budget = 0
        self.held = 0
        self.dropping = False

    def enter(self) -> bool:
        with self.cond:
            self.held += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.budget > 0 or self.dropping)
            self.held -= 1
            if self.dropping:
                return False
            self.budget -= 1
            return True

    def allow(self, n: int) -> None:
        with self.cond:
            self.budget, self.dropping = n, False
            self.cond.notify_all()

    def drop(self) -> None:
        with self.cond:
            self.dropping = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.held == 0, timeout=10)

    def wait_held(self, timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.held > 0, timeout=timeout), "nothing held"


@pytest.fixture
def app_api():
    made = []

    def make(**kwargs):
        made.append(AppApi(**kwargs))
        return made[-1]

    yield make
    for api in made:
        api.stop()


@pytest.fixture
def gateway(tmp_path):
    """(base URL, token, Services, the upload POSTs it handled) of the gateway app on loopback;
    ``gateway.gate``, when set, is asked before each upload request is handled."""
    app = create_app(make_settings(tmp_path / "gw"))
    init_stores(app.extensions["gateway"])
    posts: list[str | None] = []
    holder: dict = {"gate": None}

    @app.before_request
    def lockstep():
        from flask import abort, request

        uploading = request.method in ("POST", "PATCH") and (
            request.path == "/api/upload" or request.path.startswith("/api/tus/")
        )
        if not uploading:
            return
        if holder["gate"] is not None and not holder["gate"].enter():
            abort(503)  # dropped: its client is gone; the body is never read
        posts.append(request.headers.get("Idempotency-Key"))

    from gateway.http.auth import mint_token

    with app.app_context():
        token = mint_token("alice")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.port}", token, app.extensions["gateway"], posts, holder
    server.shutdown()
    server.server_close()


@pytest.fixture
def box(tmp_path):
    with Outbox(tmp_path / "outbox", disk_reserve=0) as outbox:
        yield outbox


def three_steps(app_url: str) -> tuple[list[StepSpec], list[tuple[str, str]]]:
    """The chain of the docs: create (captures attachId), the upload (attachId as a field),
    update (the stored key)."""
    steps = chain.assemble(
        [chain.parse_step(f'create: POST {app_url}/api/attachments {{"title": "north wall"}}',
                          before=True)],
        [chain.parse_step(f"update: PATCH {app_url}/api/attachments/{{{{steps.create.attachId}}}}"
                          ' {"key": "{{s3Key}}", "url": "{{url}}", "sha256": "{{sha256}}",'
                          ' "size": {{size}}}', before=False)],
        captures=[("create", "attachId", "/AttachID")],
        headers=[("create", "Authorization", "Bearer {{env.APP_TOKEN}}"),
                 ("update", "Authorization", "Bearer {{env.APP_TOKEN}}")],
    )  # fmt: skip
    return steps, [("attachId", "{{steps.create.attachId}}"), ("run", "chain")]


def push(box: Outbox, tmp_path: Path, steps, fields, *, size: int = 30_000, threshold=KiB * KiB):
    path = tmp_path / "scan.png"
    path.write_bytes(png_bytes(size))
    return box.push([Incoming(path, "scan.png")], project="p1", fields=fields, steps=steps,
                    tus_threshold=threshold)  # fmt: skip


def sync(box: Outbox, url: str, token: str, reporter=None, **kwargs):
    reporter = reporter or JsonLines(io.StringIO())
    env = {"APP_TOKEN": "app-secret"}
    client = GatewayClient(url, token, chunk_size=64 * KiB)
    result = Syncer(box, client, reporter, env=env, **kwargs).run(max_wait=0)
    lines = reporter.stream.getvalue().splitlines()
    return [json.loads(line) for line in lines], result


def media(url: str, token: str, media_id: str) -> dict:
    answer = requests.get(f"{url}/api/media/{media_id}", timeout=10,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    answer.raise_for_status()
    return answer.json()


def assert_token_only_to_the_gateway(api: AppApi, token: str) -> None:
    for got in api.got:
        assert got["headers"].get("Authorization") == "Bearer app-secret"
        assert token not in json.dumps(got)


# -- the three-step chain ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["form", "tus"])
def test_the_three_step_chain_runs_each_step_once_and_carries_its_captures(
    tmp_path, box, gateway, app_api, transport
):
    url, token, _, posts, _ = gateway
    api = app_api()
    steps, fields = three_steps(api.url)
    item = push(box, tmp_path, steps, fields, threshold=KiB if transport == "tus" else KiB * KiB)
    events, result = sync(box, url, token)
    assert result.done == [item.id]
    creates, updates = api.requests("POST"), api.requests("PATCH")
    assert len(creates) == 1 and creates[0]["json"] == {"title": "north wall"}
    assert creates[0]["headers"]["Idempotency-Key"] == f"{item.idempotency_key}.step0"
    record = box.get(item.id).files[0].record
    stored = media(url, token, record["mediaId"])
    assert stored["metadata"]["attachId"] == str(FIRST_ID)  # the upload carried the id
    assert stored["metadata"]["run"] == "chain"
    assert len(updates) == 1
    assert updates[0]["path"] == f"/api/attachments/{FIRST_ID}"
    assert updates[0]["json"] == {"key": stored["s3Key"], "url": stored["url"],
                                  "sha256": stored["sha256"] or record["sha256"], "size": 30_000}  # fmt: skip
    assert updates[0]["headers"]["Idempotency-Key"] == f"{item.idempotency_key}.step1"
    assert api.records[FIRST_ID]["updated"]["key"] == stored["s3Key"]
    assert_token_only_to_the_gateway(api, token)
    if transport == "form":
        assert posts == [item.idempotency_key]  # one upload
    else:
        assert posts[0] == f"{item.idempotency_key}.file0" and len(posts) >= 2  # create, PATCHes
    kinds = [
        (e["event"], e.get("step")) for e in events if e["event"] in ("step", "stored", "done")
    ]
    assert kinds == [("step", "create"), ("stored", None), ("step", "update"), ("done", None)]
    assert [e["captured"] for e in events if e["event"] == "step"] == [{"attachId": FIRST_ID}, {}]
    done = box.get(item.id)
    assert done.state == State.DONE
    assert done.captured == {"create": {"attachId": FIRST_ID}, "update": {}}
    assert [s.answer_status for s in done.steps] == [201, 200]


def test_a_step_before_the_upload_that_is_busy_is_retried_with_its_key_as_told(
    tmp_path, box, gateway
):
    url, token, _, posts, _ = gateway
    answers = {1: b"", 2: b'{"data": {"id": "r-9"}}'}
    app = ScriptedServer((429, {"Retry-After": "0"}), (201, {}),
                         body_for=lambda status, count: answers.get(count, b"{}"))  # fmt: skip
    try:
        steps = chain.assemble([StepSpec("POST", app.url + "/records", name="create",
                                         capture=(("id", "/data/id"),))], [])  # fmt: skip
        item = push(box, tmp_path, steps, [("recordId", "{{steps.create.id}}")])
        events, result = sync(box, url, token)
    finally:
        app.close()
    assert result.done == [item.id]
    assert [e["waitSeconds"] for e in events if e["event"] == "retry"] == [0]
    keys = [g["headers"]["Idempotency-Key"] for g in app.got]
    assert keys == [f"{item.idempotency_key}.step0"] * 2
    assert posts == [item.idempotency_key]
    stored = media(url, token, box.get(item.id).files[0].record["mediaId"])
    assert stored["metadata"]["recordId"] == "r-9"


def test_each_step_done_is_reported_on_a_terminal_too(tmp_path, box):
    from rich.console import Console

    from outbox.report import Terminal

    item = push(box, tmp_path, [StepSpec("POST", "http://a/", name="create", before=True)], [])
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    report = Terminal(console)
    item.steps[0].answer_status = 201
    report.step_done(item, item.steps[0])
    report.close()
    assert f"step   {item.id[:8]} create: 201" in console.file.getvalue()


# -- refusals -----------------------------------------------------------------------------------------
def test_a_permanent_refusal_at_the_first_step_fails_the_item_with_the_apps_answer(
    tmp_path, box, gateway, app_api
):
    url, token, svc, posts, _ = gateway
    api = app_api(refuse=(422, b'{"error": "title is required"}'))
    steps, fields = three_steps(api.url)
    item = push(box, tmp_path, steps, fields)
    events, result = sync(box, url, token)
    assert result.failed == [item.id]
    failed = box.get(item.id)
    assert failed.state == State.FAILED
    assert failed.steps[0].answer == '{"error": "title is required"}'
    in_memory = box.get(item.id)
    box.retry(in_memory)
    in_memory = box.get(item.id)
    box.claim(in_memory)
    box.mark_failed(in_memory, "again", step=in_memory.steps[0], answer="kept")
    assert in_memory.steps[0].answer == "kept" == box.get(item.id).steps[0].answer
    box.release(in_memory)
    failed.steps[0].answer = '{"error": "title is required"}'
    assert failed.steps[0].answer_status is None and not failed.steps[1].done
    assert failed.last_error.endswith(': 422: {"error": "title is required"}')
    assert "step create POST" in failed.last_error
    assert [e["event"] for e in events][-1] == "failed"
    assert posts == []  # nothing uploaded
    assert (
        svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None, status=None).items
        == []
    )
    assert len(api.requests("POST")) == 1 and api.requests("PATCH") == []
    # Fixed on the app's side: `retry` goes on from the step that failed.
    api.refuse = None
    box.retry(failed)
    _, again = sync(box, url, token)
    assert again.done == [item.id]
    assert len(api.requests("POST")) == 2 and len(api.requests("PATCH")) == 1
    assert posts == [item.idempotency_key]


@pytest.mark.parametrize(
    ("body", "error"),
    [(b'{"id": 5}', "an answer without '/AttachID' to capture"),
     (b"<html>created</html>", "an answer that is not JSON")],
)  # fmt: skip
def test_a_2xx_without_the_value_to_capture_fails_the_item_with_the_answer(
    tmp_path, box, gateway, body, error
):
    url, token, _, posts, _ = gateway
    app = ScriptedServer((201, {}), body_for=lambda status, count: body)
    try:
        steps = chain.assemble([StepSpec("POST", app.url + "/a", name="create",
                                         capture=(("attachId", "/AttachID"),))], [])  # fmt: skip
        item = push(box, tmp_path, steps, [("attachId", "{{steps.create.attachId}}")])
        _, result = sync(box, url, token)
    finally:
        app.close()
    assert result.failed == [item.id]
    failed = box.get(item.id)
    assert error in failed.last_error and failed.steps[0].answer == body.decode()
    assert not failed.steps[0].done and posts == []


def test_the_app_api_down_for_the_last_step_repeats_no_upload_and_the_step_runs_when_back(
    tmp_path, box, gateway, app_api
):
    url, token, _, posts, _ = gateway
    api = app_api()
    steps, fields = three_steps(api.url)
    item = push(box, tmp_path, steps, fields)

    class DownAfterCreate(JsonLines):
        def step_done(self, item, step):
            super().step_done(item, step)
            if step.spec.name == "create":
                api.stop()

    events, result = sync(box, url, token, DownAfterCreate(io.StringIO()))
    assert result.unfinished == 1 and not result.done
    waiting = box.get(item.id)
    assert waiting.state == State.STORED and "ConnectionError" in waiting.last_error
    assert [s.done for s in waiting.steps] == [True, False]
    assert [e["event"] for e in events if e["event"] in ("stored", "retry")] == ["stored", "retry"]
    box.schedule_retry(waiting, delay=0, error=waiting.last_error, unreachable=False)  # due now

    api.restart()
    events, result = sync(box, url, token)
    assert result.done == [item.id]
    assert "stored" not in [e["event"] for e in events]
    assert posts == [item.idempotency_key]  # the upload went once
    assert len(api.requests("POST")) == 1 and len(api.requests("PATCH")) == 1
    record = box.get(item.id).files[0].record
    assert api.records[FIRST_ID]["updated"]["key"] == record["s3Key"]


@pytest.mark.parametrize("where", ["header", "body", "url"])
def test_a_step_that_would_carry_the_gateways_token_is_refused_not_sent(
    tmp_path, box, gateway, app_api, where
):
    url, token, _, posts, _ = gateway
    api = app_api()
    spec = {
        "header": StepSpec("POST", api.url + "/api/attachments", "{}", (("X-T", "{{env.GW}}"),)),
        "body": StepSpec("POST", api.url + "/api/attachments", '{"t": "{{env.GW}}"}'),
        "url": StepSpec("POST", api.url + "/api/attachments?t={{env.GW}}", "{}"),
    }[where]
    item = push(box, tmp_path, [dataclasses.replace(spec, name="create", before=True)], [])
    client = GatewayClient(url, token)
    reporter = JsonLines(io.StringIO())
    result = Syncer(box, client, reporter, env={"GW": token}).run(max_wait=0)
    assert result.failed == [item.id]
    failed = box.get(item.id)
    assert failed.last_error.endswith("it would carry the gateway's token; not sent")
    assert failed.steps[0].answer is None  # nothing was sent, so there is no answer
    assert token not in failed.last_error and token not in reporter.stream.getvalue()
    assert api.got == [] and posts == []
    # The same step with another value goes (the check is on the value, not on the template).
    box.retry(failed)
    result = Syncer(box, client, JsonLines(io.StringIO()), env={"GW": "app-value"}).run(max_wait=0)
    assert result.done == [item.id] and len(api.got) == 1 and posts == [item.idempotency_key]


# -- checked when queued --------------------------------------------------------------------------
def step(text: str, *, before: bool = False) -> StepSpec:
    return chain.parse_step(text, before=before)


@pytest.mark.parametrize(
    ("before", "after", "captures", "fields", "error"),
    [
        (["create: POST http://a/{{steps.update.x}}"], ["update: PUT http://a/"], [("update", "x", "/x")],
         [], r"step 'create': \{\{steps.update.x\}\}: step 'update' has not run by then"),
        (["create: POST http://a/ {\"id\": \"{{steps.create.id}}\"}"], [], [("create", "id", "/id")],
         [], r"step 'create' has not run by then"),
        (["create: POST http://a/"], [], [], [("a", "{{steps.nope.id}}")],
         r"field 'a': \{\{steps.nope.id\}\}: no step is named 'nope'"),
        (["create: POST http://a/"], [], [("create", "id", "/id")], [("a", "{{steps.create.other}}")],
         r"step 'create' captures no 'other'"),
        ([], ["update: POST http://a/"], [("update", "id", "/id")], [("a", "{{steps.update.id}}")],
         r"field 'a': .*step 'update' has not run by then"),
        (["create: POST http://a/{{s3Key}}"], [], [], [], r"step 'create': \{\{s3Key\}\}: the upload has not run"),
        ([], [], [], [("a", "{{mediaId}}")], r"field 'a': \{\{mediaId\}\}: the upload has not run"),
        ([], [], [], [("a", "{{env.SECRET}}")], r"field 'a': .*the environment is for steps"),
        ([], ["POST http://a/{{files.1.url}}"], [], [], r"unknown placeholder \{\{files.1.url\}\}"),
        (["create: POST http://a/"], [], [("create", "id", "AttachID")], [], r"capture id = 'AttachID'"),
        (["create: POST http://a/"], [], [("create", "id", "/a"), ("create", "id", "/b")], [],
         r"two captures have the same name"),
        (["create: POST http://a/"], ["create: POST http://b/"], [], [], r"two steps have this name"),
        ([], ["update: POST http://a/"], [("create", "id", "/id")], [], r"--capture create.id: no step"),
    ],
)  # fmt: skip
def test_a_chain_that_could_not_run_is_refused_when_queued(
    tmp_path, box, before, after, captures, fields, error
):
    with pytest.raises(InvalidItem, match=error):
        steps = chain.assemble([step(s, before=True) for s in before], [step(s) for s in after],
                               captures=captures)  # fmt: skip
        push(box, tmp_path, steps, fields)
    assert box.items() == []
    assert list(box.files_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [(StepSpec("POST", "http://a/", name="9lives"), "a step's name is"),
     (StepSpec("GET", "http://a/", name="s"), "the method must be one of"),
     (StepSpec("POST", "file:///etc/passwd", name="s"), "the URL must be http or https"),
     (StepSpec("POST", "http://a/", headers=(("Idempotency-Key", "mine"),), name="s"),
      "'Idempotency-Key' is not a header a step may set"),
     (StepSpec("POST", "http://a/", headers=(("Bad Header", "x"),), name="s"),
      "'Bad Header' is not a header"),
     (StepSpec("POST", "http://a/", capture=(("bad name", "/x"),), name="s"), "capture name"),
     (StepSpec("POST", "http://a/", capture=(("x", "/a~2b"),), name="s"), "capture x = '/a~2b'")],
)  # fmt: skip
def test_a_step_that_could_not_be_sent_is_refused_when_queued(tmp_path, box, spec, error):
    with pytest.raises(InvalidItem, match=re.escape(error)):
        push(box, tmp_path, [spec], [])
    assert box.items() == []


def test_steps_before_the_upload_come_first_and_every_capture_kind_is_checked(tmp_path, box):
    late = [StepSpec("POST", "http://a/", name="after"),
            StepSpec("POST", "http://a/", name="first", before=True)]  # fmt: skip
    with pytest.raises(InvalidItem, match="steps before the upload come before those after it"):
        push(box, tmp_path, late, [])
    fine = chain.assemble(
        [step("create: POST http://a/{{env.X}}", before=True)],
        [step('update: PATCH http://a/{{steps.create.id}}/{{files.0.mediaId}} {"k": "{{s3Key}}",'
              ' "n": "{{originalName}}", "v": "{{steps.update0.v}}"}'),
         step("update0: POST http://a/")],
        captures=[("create", "id", "/id"), ("update0", "v", "")],
    )  # fmt: skip
    with pytest.raises(InvalidItem, match="step 'update0' has not run by then"):
        push(box, tmp_path, fine, [("id", "{{steps.create.id}}")])
    fine[1] = StepSpec(fine[1].method, fine[1].url.replace("{{files.0.mediaId}}", "x"),
                       '{"k": "{{s3Key}}"}', name="update")  # fmt: skip
    item = push(box, tmp_path, fine, [("id", "{{steps.create.id}}")])
    assert [(s.spec.name, s.spec.before) for s in item.steps] == [
        ("create", True), ("update", False), ("update0", False)]  # fmt: skip
    assert item.steps[0].spec.capture == (("id", "/id"),)
    flagged = chain.assemble([StepSpec("POST", "http://a/", before=False)],
                             [StepSpec("POST", "http://a/", before=True)])  # fmt: skip
    assert [s.before for s in flagged] == [True, False]  # the list a step is given in decides


def test_a_placeholder_with_a_dotted_capture_name_names_the_capture():
    steps = chain.assemble([step("c: POST http://a/", before=True)],
                           [step("u: POST http://a/{{steps.c.id.x}}")],
                           captures=[("c", "id", "/id")])  # fmt: skip
    with pytest.raises(InvalidItem, match=r"step 'c' captures no 'id\.x'"):
        chain.check(steps, files=1, fields=[])


def test_a_steps_json_body_carries_captured_text_escaped_and_a_refusal_its_status():
    from outbox.steps import StepRefused, run_step

    bodies = {1: b"", 2: b"not json", 3: b"\xffrefused", 4: b'{"other": 1}', 5: b""}
    app = ScriptedServer((201, {}), (201, {}), (422, {}), (200, {}), (201, {}),
                         body_for=lambda st, n: bodies[n])  # fmt: skip
    try:
        spec = StepSpec("POST", app.url + "/x?k={{steps.c.s}}", '{"t": "{{steps.c.s}}"}', name="u")
        context = chain.Context(captured={"c": {"s": 'a "quoted"\\ value'}})
        assert run_step(requests.Session(), spec, context, idempotency_key="k").status == 201
        assert json.loads(app.got[0]["body"]) == {"t": 'a "quoted"\\ value'}
        assert app.got[0]["path"] == "/x?k=a%20%22quoted%22%5C%20value"
        capturing = dataclasses.replace(spec, capture=(("id", "/id"),))
        with pytest.raises(StepRefused) as caught:
            run_step(requests.Session(), capturing, context, idempotency_key="k")
        assert (caught.value.status, caught.value.answer) == (201, "not json")
        assert str(caught.value).startswith(f"step u POST {app.url}/x?k=a%20%22quoted%22")
        assert ": 201, an answer that is not JSON (nothing to capture): not json" in str(
            caught.value
        )
        with pytest.raises(StepRefused) as caught:
            run_step(requests.Session(), spec, context, idempotency_key="k")
        assert (caught.value.status, caught.value.answer) == (422, "\ufffdrefused")
        assert caught.value.step is None  # (the sync sets it)
        with pytest.raises(StepRefused) as caught:
            run_step(requests.Session(), capturing, context, idempotency_key="k")
        assert (caught.value.status, caught.value.answer) == (200, '{"other": 1}')
        assert ": 200, an answer without '/id' to capture" in str(caught.value)
        text = dataclasses.replace(spec, body='t="{{steps.c.s}}"')  # not JSON: nothing escaped
        run_step(requests.Session(), text, context, idempotency_key="k")
        assert app.got[4]["body"] == b't="a "quoted"\\ value"'
    finally:
        app.close()


# -- parsing the command line ----------------------------------------------------------------------
def test_captures_and_headers_are_parsed_from_the_command_line():
    assert chain.parse_capture("create.attachId=/AttachID") == ("create", "attachId", "/AttachID")
    assert chain.parse_capture(" c.id = /a/0 ") == ("c", "id", "/a/0")
    assert chain.parse_capture("c.id=") == ("c", "id", "")  # the whole answer
    assert chain.parse_capture("c.id=/a=b") == ("c", "id", "/a=b")
    with pytest.raises(InvalidItem, match="expected '\\[NAME:\\] METHOD URL"):
        chain.parse_step("post: PUT http://a/", before=False)  # a method is no step's name
    for bad in ("create=/x", "create.=/x", ".id=/x", "create.id", "1c.id=/x"):
        with pytest.raises(InvalidItem, match=r"expected STEP\.NAME=/json/pointer"):
            chain.parse_capture(bad)
    assert chain.parse_header("create: Authorization: Bearer {{env.T}}") == (
        "create", "Authorization", "Bearer {{env.T}}")  # fmt: skip
    assert chain.parse_header("c:X-A:b:c") == ("c", "X-A", "b:c")
    for bad in ("create Authorization: x", "create: Authorization", "9: X: y"):
        with pytest.raises(InvalidItem, match="expected 'STEP: Header-Name: value'"):
            chain.parse_header(bad)
    headed = chain.assemble([], [step("u: POST http://a/")], headers=[("u", "X-A", "1")])
    assert headed[0].headers == (("X-A", "1"),) and headed[0].before is False
    with pytest.raises(InvalidItem, match=r"--header nope\.X-A: no step is named 'nope'"):
        chain.assemble([], [step("u: POST http://a/")], headers=[("nope", "X-A", "1")])


def test_captured_values_are_rendered_as_text_or_json():
    context = chain.Context(captured={"c": {"n": 123, "s": "a b", "t": True, "o": {"k": [1]},
                                            "z": None}})  # fmt: skip
    rendered = chain.render("{{steps.c.n}}|{{steps.c.s}}|{{steps.c.t}}|{{steps.c.o}}|"
                            "{{steps.c.z}}|{{steps.c.gone}}|{{steps.d.x}}", context)  # fmt: skip
    assert rendered == '123|a b|true|{"k": [1]}|||'
    body = chain.render('{"id": {{steps.c.n}}, "s": "{{steps.c.s}}"}', context,
                        quote=chain.json_escape)  # fmt: skip
    assert json.loads(body) == {"id": 123, "s": "a b"}
    assert chain.render("{{mediaId}}", chain.Context()) == ""  # no records yet
    answer = {"AttachID": 7, "a/b": {"~x": ["p", "q"]}}
    spec = StepSpec("POST", "http://a/", name="s",
                    capture=(("id", "/AttachID"), ("q", "/a~1b/~0x/1"), ("all", "")))  # fmt: skip
    assert chain.capture(spec, answer) == {"id": 7, "q": "q", "all": answer}
    with pytest.raises(KeyError, match="/nope"):
        chain.capture(StepSpec("POST", "http://a/", capture=(("x", "/nope"),)), answer)


# -- the schema ------------------------------------------------------------------------------------------
def test_the_schema_takes_its_examples_and_the_items_the_outbox_queues(tmp_path, box):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for example in SCHEMA["examples"]:
        validator.validate(example)
    steps, fields = three_steps("https://app.example")
    item = push(box, tmp_path, steps, fields)
    from outbox.cli import item_json

    document = item_json(box.get(item.id))["chain"]
    validator.validate(document)
    assert [s["name"] for s in document["before"]] == ["create"]
    assert document["before"][0]["capture"] == {"attachId": "/AttachID"}
    assert document["upload"]["fields"] == {"attachId": "{{steps.create.attachId}}", "run": "chain"}
    assert document["after"][0]["headers"] == {"Authorization": "Bearer {{env.APP_TOKEN}}"}
    assert document["before"][0]["body"] == '{"title": "north wall"}'
    bodiless = chain.document([StepSpec("DELETE", "http://a/", name="d")], project="p",
                              fields=[], files=[{"name": "a"}])  # fmt: skip
    assert bodiless["after"] == [{"name": "d", "method": "DELETE", "url": "http://a/"}]
    validator.validate(bodiless)


@pytest.mark.parametrize(
    "change",
    [lambda d: d["before"][0].pop("name"),
     lambda d: d["before"][0].update(method="GET"),
     lambda d: d["before"][0]["capture"].update(attachId="AttachID"),
     lambda d: d["before"][0]["capture"].update({"bad name": "/x"}),
     lambda d: d["upload"].update(files=[]),
     lambda d: d["after"][0].update(url="ftp://x/"),
     lambda d: d.update(later=[])],
)  # fmt: skip
def test_the_schema_refuses_what_the_outbox_refuses(change):
    document = json.loads(json.dumps(SCHEMA["examples"][0]))
    change(document)
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document))


# -- the outbox command, SIGKILLed between every two steps -----------------------------------------
def docs_example() -> list[str]:
    """The arguments of the three-step ``outbox push`` in docs/outbox.md."""
    text = (ROOT / "docs" / "outbox.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "--before" in b)
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    return words[words.index("push") + 1 :]


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outbox", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def push_docs_chain(tmp_path: Path, url: str, token: str, api: AppApi) -> tuple[dict, dict]:
    """The docs' three-step chain queued by ``outbox push`` against ``api``: (env, item)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")},
           "OUTBOX_DIR": str(tmp_path / "outbox"), "OUTBOX_GATEWAY": url, "OUTBOX_TOKEN": token,
           "APP_TOKEN": "app-secret"}  # fmt: skip
    (tmp_path / "scan.jpg").write_bytes(png_bytes(40_000))
    args = [a.replace("https://app.example", api.url) for a in docs_example()]
    args[args.index("scan.jpg")] = str(tmp_path / "scan.jpg")
    pushed = cli(env, "push", *args, "--json")
    assert pushed.returncode == 0, pushed.stderr
    item = json.loads(pushed.stdout)
    assert [s["name"] for s in item["steps"]] == ["create", "update"]
    return env, item


def test_the_docs_chain_queued_and_sent_by_the_command_survives_a_sigkill_between_every_step(
    tmp_path, gateway, app_api
):
    url, token, _, posts, holder = gateway
    gate = Gate()
    api = app_api(gate=gate)
    holder["gate"] = gate
    env, item = push_docs_chain(tmp_path, url, token, api)

    # Each round lets one request through, then kills the process once the next is held at its
    # target (so it is never handled): between create and the upload, the upload and update.
    for after in ("step", "stored"):
        gate.allow(1)
        proc = subprocess.Popen([sys.executable, "-m", "outbox", "sync", "--json"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)  # fmt: skip
        try:
            for line in proc.stdout:
                if json.loads(line)["event"] == after:
                    break
            gate.wait_held()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            gate.drop()
        state = json.loads(cli(env, "status", item["id"], "--json").stdout)
        assert state["state"] == ("waiting" if after == "step" else "stored")
        assert state["steps"][0]["captured"] == {"attachId": FIRST_ID}
    gate.allow(100)
    final = cli(env, "sync", "--json")
    assert final.returncode == 0, final.stderr
    assert len(api.requests("POST")) == 1 and len(api.requests("PATCH")) == 1  # every step once
    assert posts == [item["idempotencyKey"]]  # the upload once
    done = json.loads(cli(env, "status", item["id"], "--json").stdout)
    assert done["state"] == "done"
    record = done["files"][0]["record"]
    stored = media(url, token, record["mediaId"])
    assert stored["metadata"]["attachId"] == str(FIRST_ID)
    assert api.requests("PATCH")[0]["path"] == f"/api/attachments/{FIRST_ID}"
    assert api.records[FIRST_ID]["updated"] == {"key": stored["s3Key"], "url": stored["url"]}
    assert_token_only_to_the_gateway(api, token)
    assert [(s["name"], s["status"], s["captured"]) for s in done["steps"]] == [
        ("create", 201, {"attachId": FIRST_ID}), ("update", 200, {})]  # fmt: skip


@pytest.mark.parametrize("held", ["create", "update"])
def test_a_step_the_app_handled_while_the_command_was_killed_is_sent_again_with_its_key(
    tmp_path, gateway, app_api, held
):
    """The worst moment for a step: the app has done it, its answer never reached the outbox
    (SIGKILLed while the request was in flight). The step goes again with the same
    Idempotency-Key, the app answers it as the first time, and the chain ends once."""
    url, token, _, posts, _ = gateway
    gate = Gate()
    api = app_api(gate=gate)
    env, item = push_docs_chain(tmp_path, url, token, api)
    method = {"create": "POST", "update": "PATCH"}[held]
    gate.allow(0 if held == "create" else 1)  # the step held at the app, before it is handled
    proc = subprocess.Popen([sys.executable, "-m", "outbox", "sync", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        gate.wait_held()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert api.requests(method) == []
    gate.allow(100)  # the app handles it now; its answer goes to a closed connection
    deadline = time.monotonic() + 10
    while not api.requests(method) and time.monotonic() < deadline:
        time.sleep(0.02)
    state = json.loads(cli(env, "status", item["id"], "--json").stdout)
    assert [s["status"] for s in state["steps"]] == (
        [None, None] if held == "create" else [201, None])  # fmt: skip
    final = cli(env, "sync", "--json")
    assert final.returncode == 0, final.stderr
    first, again = api.requests(method)  # sent again, with the same key
    assert first["headers"]["Idempotency-Key"] == again["headers"]["Idempotency-Key"]
    assert first["headers"]["Idempotency-Key"].endswith(".step0" if held == "create" else ".step1")
    assert len(api.requests("POST" if held == "update" else "PATCH")) == 1
    assert list(api.records) == [FIRST_ID]  # one attachment, not two
    assert posts == [item["idempotencyKey"]]  # the upload once
    done = json.loads(cli(env, "status", item["id"], "--json").stdout)
    assert done["state"] == "done"
    stored = media(url, token, done["files"][0]["record"]["mediaId"])
    assert stored["metadata"]["attachId"] == str(FIRST_ID)
    assert api.records[FIRST_ID]["updated"] == {"key": stored["s3Key"], "url": stored["url"]}
    assert [(s["name"], s["status"], s["captured"]) for s in done["steps"]] == [
        ("create", 201, {"attachId": FIRST_ID}), ("update", 200, {})]  # fmt: skip


def test_a_chain_the_command_cannot_queue_leaves_nothing(tmp_path):
    env = {**os.environ, "OUTBOX_DIR": str(tmp_path / "outbox")}
    (tmp_path / "a.png").write_bytes(png_bytes(1000))
    refused = cli(env, "push", str(tmp_path / "a.png"), "-p", "p1",
                  "--before", "create: POST http://a/ {\"x\": \"{{steps.update.id}}\"}",
                  "--then", "update: PATCH http://a/", "--capture", "update.id=/id")  # fmt: skip
    assert refused.returncode == 2
    assert "step 'create': {{steps.update.id}}: step 'update' has not run by then" in refused.stderr
    bad_capture = cli(env, "push", str(tmp_path / "a.png"), "-p", "p1", "--capture", "x")
    assert bad_capture.returncode == 2 and "--capture 'x'" in bad_capture.stderr
    assert json.loads(cli(env, "queue", "--all", "--json").stdout) == []
    assert list((tmp_path / "outbox" / "files").iterdir()) == []
