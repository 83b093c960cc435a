"""The outbox's transport, steps and sync against the gateway app served in this process
(werkzeug's threaded server, local storage): fast, and the same routes the CLI tests reach
through gunicorn and nginx in test_outbox_sync.py."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import io
import json
import os
import random
import re
import socket
import sqlite3
import threading
import time
import types
from pathlib import Path

import pytest
import requests
from tusclient.exceptions import TusCommunicationError
from werkzeug.serving import make_server

from gateway import create_app
from outbox import lease
from outbox.chain import Context
from outbox.errors import Interrupted, Permanent, TokenRefused, Transient
from outbox.report import JsonLines
from outbox.steps import StepRefused, run_step
from outbox.store import Incoming, Outbox, State, StepSpec
from outbox.sync import CLOCK_SLACK, KEY_TTL, Backoff, Syncer, SyncResult
from outbox.transport import GatewayClient

from conftest import init_stores, make_settings
from e2e_harness import poll
from scripted_server import ScriptedServer
from support import free_port, mp4_bytes, png_bytes

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def gateway(tmp_path):
    """(base URL, a token, Services) of a gateway app served on loopback by werkzeug."""
    app = create_app(make_settings(tmp_path / "gw"))
    init_stores(app.extensions["gateway"])
    app.tus_requests = []  # type: ignore[attr-defined]
    app.upload_posts = []  # type: ignore[attr-defined]

    @app.before_request
    def note_tus_requests():
        from flask import request

        if request.path.startswith("/api/tus/") and request.method in ("POST", "PATCH"):
            app.tus_requests.append((request.method, dict(request.headers)))
        if request.path == "/api/upload" and request.method == "POST":
            app.upload_posts.append(request.headers.get("Idempotency-Key"))

    from gateway.http.auth import mint_token

    with app.app_context():
        token = mint_token("alice")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.extensions["gateway"].tus_requests = app.tus_requests
    app.extensions["gateway"].upload_posts = app.upload_posts
    yield f"http://127.0.0.1:{server.port}", token, app.extensions["gateway"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def box(tmp_path):
    with Outbox(tmp_path / "outbox", disk_reserve=0) as outbox:
        yield outbox


def push(box: Outbox, tmp_path: Path, *named: tuple[str, bytes], threshold=MiB, steps=()):
    incoming = []
    for name, data in named:
        path = tmp_path / name
        path.write_bytes(data)
        incoming.append(Incoming(path, name))
    return box.push(incoming, project="p1", fields=[("run", "x")], steps=steps,
                    tus_threshold=threshold)  # fmt: skip


def stored(svc, record: dict) -> bytes:
    return (Path(svc.settings.storage_url) / record["s3Key"]).read_bytes()


def stored_answer(entries) -> list[dict]:
    return [{"mediaId": e.name, "sha256": e.sha256, "size": e.size, "status": "stored"}
            for e in entries]  # fmt: skip


def no_restart() -> None:
    raise AssertionError("no upload is gone here")


def sync(box: Outbox, url: str, token: str, **kwargs) -> tuple[list[dict], object]:
    lines = io.StringIO()
    client = GatewayClient(url, token, chunk_size=kwargs.pop("chunk_size", 64 * KiB))
    result = Syncer(box, client, JsonLines(lines), **kwargs).run(max_wait=0)
    return [json.loads(line) for line in lines.getvalue().splitlines()], result


# -- the form path ------------------------------------------------------------------------------------
def test_small_files_go_as_one_form_post_and_a_lost_answer_is_replayed_safely(
    tmp_path, box, gateway
):
    url, token, svc = gateway
    item = push(box, tmp_path, ("a.png", png_bytes(30_000)), ("b.png", png_bytes(40_000, seed=3)))
    events, result = sync(box, url, token)
    assert result.done == [item.id]
    done = box.get(item.id)
    assert done.state == State.DONE
    first = [f.record for f in done.files]
    assert [r["originalName"] for r in first] == ["a.png", "b.png"]
    for entry, record in zip(done.files, first, strict=True):
        assert record["sha256"] == entry.sha256
        assert stored(svc, record) == entry.path.read_bytes()
        assert record["metadata"] == {"run": "x", "outboxItem": item.id}
    assert [e["event"] for e in events][-2:] == ["stored", "done"]
    # As after a SIGKILL between the gateway's answer and the outbox's commit:
    box._conn.execute("UPDATE files SET record = NULL")
    box._conn.execute("UPDATE items SET state = 'uploading'")
    sync(box, url, token)
    assert [f.record["mediaId"] for f in box.get(item.id).files] == [r["mediaId"] for r in first]
    page = svc.records.list_media(tenant="", project_id="p1", limit=100, cursor=None, status=None)
    assert len(page.items) == 2


def test_the_form_post_declares_types_and_fails_as_the_gateway_answers(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes(seed=1)), ("notes.zzq", b"plain words"))
    a, notes = item.files

    def record(entry, sha256=None):
        return {"mediaId": entry.name, "sha256": sha256 or entry.sha256, "size": entry.size,
                "status": "stored"}  # fmt: skip

    bodies = {
        1: {"files": [record(a), record(notes)]},
        2: {"files": [record(a)]},
        4: {"files": [record(a), record(notes, sha256="0" * 64)]},
    }
    app = ScriptedServer((200, {}), (200, {}), (503, {"Retry-After": "3"}), (200, {}),
                         body_for=lambda status, n: json.dumps(bodies[n]).encode() if n in bodies else b"")  # fmt: skip
    client = GatewayClient(app.url, "tok")
    progress = lambda entry, sent: None
    try:
        assert client.upload_form(item, item.files, progress) == bodies[1]["files"]
        body = app.got[0]["body"]
        assert b'filename="a.png"\r\nContent-Type: image/png\r\n' in body
        assert b'filename="notes.zzq"\r\nContent-Type: application/octet-stream\r\n' in body
        with pytest.raises(Permanent, match=r"^upload: 1 records for 2 files$"):
            client.upload_form(item, item.files, progress)
        with pytest.raises(Transient) as busy:
            client.upload_form(item, item.files, progress)
        assert str(busy.value) == "upload: 503" and busy.value.retry_after == 3.0
        with pytest.raises(Permanent) as differs:
            client.upload_form(item, item.files, progress)
        assert differs.value.code == "sha256_mismatch"
        assert str(differs.value) == (
            f"the gateway holds SHA-256 {'0' * 64} for notes.zzq (status stored), the outbox "
            f"holds {notes.sha256}: stopped, nothing more is sent for this item"
        )
    finally:
        app.close()
    with pytest.raises(Transient) as down:
        GatewayClient(f"http://127.0.0.1:{free_port()}", "tok").upload_form(
            item, item.files, progress
        )
    assert str(down.value) == "upload: ConnectionError" and down.value.unreachable
    silent = SilentServer()
    try:
        with pytest.raises(Transient, match=r"^upload: ReadTimeout$"):
            GatewayClient(silent.url, "tok", timeout=0.2).upload_form(item, item.files, progress)
    finally:
        silent.close()


def test_a_form_bodys_progress_is_told_per_file_with_the_part_headers_counted_first():
    from outbox.transport import _ProgressSpread

    entries = [types.SimpleNamespace(name=n, size=s) for n, s in (("a", 10), ("b", 20), ("c", 5))]
    told: list[tuple[str, int]] = []
    spread = _ProgressSpread(entries, 45, lambda entry, sent: told.append((entry.name, sent)))
    for body_read in (11, 11, 25, 41, 45):  # 10 bytes of part headers and fields
        spread(body_read)
    assert told == [("a", 1), ("b", 0), ("c", 0), ("a", 10), ("b", 5), ("b", 20), ("c", 1),
                    ("c", 5)]  # fmt: skip
    told.clear()
    whole = _ProgressSpread(entries, 35, lambda entry, sent: told.append((entry.name, sent)))
    whole(35)  # no overhead at all
    assert told == [("a", 10), ("b", 20), ("c", 5)]


def test_a_file_the_gateway_refuses_fails_its_item_with_the_gateways_code(tmp_path, box, gateway):
    url, token, _ = gateway
    item = push(box, tmp_path, ("notes.txt", b"plain text is not an allowed type"))
    events, result = sync(box, url, token)
    assert result.failed == [item.id]
    failed = box.get(item.id)
    assert failed.state == State.FAILED
    assert "415 unsupported_type" in failed.last_error
    assert events[-1]["event"] == "failed"


def test_a_bad_token_stops_the_sync(tmp_path, box, gateway):
    url, _, _ = gateway
    push(box, tmp_path, ("a.png", png_bytes()))
    with pytest.raises(TokenRefused, match="401"):
        sync(box, url, "not-a-token")


# -- the tus path ---------------------------------------------------------------------------------------
def test_a_big_file_goes_over_tus_and_resumes_from_the_gateways_offset(tmp_path, box, gateway):
    url, token, svc = gateway
    data = mp4_bytes(700 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    entry = item.files[0]
    client = GatewayClient(url, token, chunk_size=128 * KiB)

    class Killed(Exception):
        pass

    def die_after_two_chunks(_entry, sent):
        box.set_sent(item, entry, sent)
        if sent >= 256 * KiB:
            raise Killed

    with pytest.raises(Killed):
        client.upload_tus(item, entry, on_url=lambda u: box.set_tus_url(item, entry, u),
                          on_restart=no_restart, on_progress=die_after_two_chunks)  # fmt: skip
    half = box.get(item.id).files[0]
    assert half.tus_url and half.tus_url.startswith(url + "/api/tus/")
    assert half.sent == 256 * KiB

    events, result = sync(box, url, token, chunk_size=128 * KiB)
    assert result.done == [item.id]
    sent = [e["sent"] for e in events if e["event"] == "progress"]
    assert sent[0] == 256 * KiB  # from where the gateway stood
    record = box.get(item.id).files[0].record
    assert record["mediaId"] == half.tus_url.rsplit("/", 1)[1]
    assert stored(svc, record) == data
    assert record["originalName"] == "clip.mp4"
    assert record["metadata"] == {"run": "x", "outboxItem": item.id}
    patches = [h for method, h in svc.tus_requests if method == "PATCH"]
    assert [int(h["Content-Length"]) for h in patches] == [128 * KiB] * 5 + [
        700 * KiB - 5 * 128 * KiB
    ]
    assert all(h["Upload-Checksum"].startswith("sha1 ") for h in patches)  # each chunk checked


def test_an_upload_url_the_gateway_no_longer_knows_starts_a_new_upload(tmp_path, box, gateway):
    url, token, svc = gateway
    data = mp4_bytes(300 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    box.set_tus_url(item, item.files[0], url + "/api/tus/0123456789abcdef0123456789abcdef")
    _, result = sync(box, url, token)
    assert result.done == [item.id]
    entry = box.get(item.id).files[0]
    assert entry.tus_url != url + "/api/tus/0123456789abcdef0123456789abcdef"
    assert stored(svc, entry.record) == data


def test_an_upload_gone_every_time_is_started_again_twice_then_waits(tmp_path, box):
    item = push(box, tmp_path, ("clip.mp4", mp4_bytes(300 * KiB)), threshold=100 * KiB)
    entry = item.files[0]
    new = {"Location": "/api/tus/" + "e" * 32}
    gone = ScriptedServer(
        (404, {}), (404, {}),  # HEAD of the stored URL; the record under it: none
        (201, new), (404, {}), (404, {}),  # a new upload: creation, PATCH, record
        (201, new), (404, {}), (404, {}),  # and once more
        (201, new),  # never reached
        body_for=lambda status, count: b"" if status != 404
        else b'{"error": {"code": "%s"}}' % (b"media_not_found" if count % 3 == 2 else b"upload_not_found"),
    )  # fmt: skip
    restarts = []

    def restart():
        restarts.append(entry.tus_url)
        entry.tus_url = None

    entry.tus_url = gone.url + "/api/tus/" + "d" * 32
    try:
        with pytest.raises(Transient) as caught:
            GatewayClient(gone.url, "tok", chunk_size=128 * KiB).upload_tus(
                item, entry, on_url=lambda u: setattr(entry, "tus_url", u), on_restart=restart,
                on_progress=lambda e, s: None,
            )  # fmt: skip
    finally:
        gone.close()
    assert str(caught.value).endswith("(a new upload was started 2 times)")
    assert str(caught.value).startswith("tus: 404 upload_not_found")
    assert len(restarts) == 2
    assert [g["method"] for g in gone.got] == [
        "HEAD",
        "GET",
        "POST",
        "PATCH",
        "GET",
        "POST",
        "PATCH",
        "GET",
    ]


@pytest.mark.parametrize("readable", [True, False])
def test_an_upload_the_gateway_says_is_stored_is_read_not_sent(tmp_path, box, readable):
    item = push(box, tmp_path, ("clip.mp4", mp4_bytes(300 * KiB)), threshold=100 * KiB)
    entry = item.files[0]
    record = {"mediaId": "d" * 32, "status": "stored", "size": entry.size, "sha256": entry.sha256}

    def body(status, count):
        if status == 409:
            return b'{"error": {"code": "upload_stored"}}'
        return json.dumps(record).encode() if status == 200 else b""

    stored_already = ScriptedServer(
        (200, {"Upload-Offset": "0", "Upload-Length": str(entry.size), "Tus-Resumable": "1.0.0"}),
        (409, {}), (200, {}) if readable else (404, {}), body_for=body,
    )  # fmt: skip
    entry.tus_url = stored_already.url + "/api/tus/" + "d" * 32
    try:
        client = GatewayClient(stored_already.url, "tok", chunk_size=128 * KiB)
        send = functools.partial(client.upload_tus, item, entry, on_url=lambda u: None,
                                 on_restart=no_restart, on_progress=lambda e, s: None)  # fmt: skip
        if readable:
            assert send() == record
        else:
            with pytest.raises(Transient) as caught:
                send()
            assert str(caught.value) == "tus: 409 upload_stored; but its record is not readable yet"
    finally:
        stored_already.close()
    assert [g["method"] for g in stored_already.got] == ["HEAD", "PATCH", "GET"]
    assert stored_already.got[2]["path"] == "/api/media/" + "d" * 32


def test_a_stored_upload_url_the_gateway_cannot_answer_for_now_is_retried(tmp_path, box, target):
    down = target()
    down.script = [(503, {"Retry-After": "4"})]
    item = push(box, tmp_path, ("clip.mp4", mp4_bytes(300 * KiB)), threshold=100 * KiB)
    box.set_tus_url(item, item.files[0], down.url + "/api/tus/abc")
    with pytest.raises(Transient) as caught:
        GatewayClient(down.url, "tok").upload_tus(
            item, item.files[0], on_url=lambda u: None, on_restart=no_restart,
            on_progress=lambda e, s: None,
        )  # fmt: skip
    assert str(caught.value).startswith("tus: 503")
    assert box.get(item.id).files[0].tus_url == down.url + "/api/tus/abc"  # kept for next time


def test_a_patch_the_gateway_cannot_take_for_now_is_retried_when_it_says(tmp_path, box):
    item = push(box, tmp_path, ("clip.mp4", mp4_bytes(300 * KiB)), threshold=100 * KiB)
    entry = item.files[0]
    busy = ScriptedServer(
        (200, {"Upload-Offset": "0", "Upload-Length": str(entry.size), "Tus-Resumable": "1.0.0"}),
        (503, {"Retry-After": "6"}),
    )
    entry.tus_url = busy.url + "/api/tus/" + "d" * 32
    try:
        with pytest.raises(Transient) as caught:
            GatewayClient(busy.url, "tok", chunk_size=128 * KiB).upload_tus(
                item, entry, on_url=lambda u: None, on_restart=no_restart,
                on_progress=lambda e, s: None,
            )  # fmt: skip
    finally:
        busy.close()
    assert [g["method"] for g in busy.got] == ["HEAD", "PATCH"]
    assert str(caught.value) == "tus: 503" and caught.value.retry_after == 6.0


def test_tus_errors_are_classified_with_their_retry_after():
    class Answer:
        response_headers = {"retry-after": "3"}

    class Uploader:
        request = Answer()

    locked = GatewayClient._tus_error(TusCommunicationError("", 423, b""), Uploader())
    assert isinstance(locked, Transient) and locked.retry_after == 3.0
    assert str(locked) == "tus: 423"
    assert not locked.unreachable
    down = GatewayClient._tus_error(TusCommunicationError("refused"), None)
    assert isinstance(down, Transient) and down.unreachable
    assert str(down) == "tus: refused"
    refused = GatewayClient._tus_error(
        TusCommunicationError("", 415, b'{"error": {"code": "unsupported_type"}}'), None
    )
    assert isinstance(refused, Permanent) and refused.code == "unsupported_type"
    text = GatewayClient._tus_error(TusCommunicationError("", 413, '{"error": {"code": "x"}}'),
                                    None)  # fmt: skip
    assert isinstance(text, Permanent) and text.code == "x"
    token = GatewayClient._tus_error(TusCommunicationError("", 401, b""), None)
    assert isinstance(token, TokenRefused)
    odd = GatewayClient._tus_error(TusCommunicationError("an answer of 204", 204, b""), None)
    assert isinstance(odd, Transient) and str(odd) == "tus: an answer of 204"
    assert not odd.unreachable


def test_healthy_means_a_200_from_healthz(gateway):
    url, token, _ = gateway
    assert GatewayClient(url, token).healthy()
    assert not GatewayClient(f"http://127.0.0.1:{free_port()}", token).healthy()
    assert not GatewayClient(url + "/nothing-here", token).healthy()


def test_healthy_gives_up_on_a_gateway_that_does_not_answer(monkeypatch):
    silent = SilentServer()
    try:
        monkeypatch.setattr("outbox.transport.HEALTH_TIMEOUT", 0.2)
        assert not GatewayClient(silent.url, "tok").healthy()
    finally:
        silent.close()


class SilentServer:
    """Accepts connections and never answers: where only a timeout ends a request."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self) -> None:
        self.listener.close()


def test_records_of_an_item_are_read_page_by_page_back_to_since(
    tmp_path, box, gateway, monkeypatch
):
    url, token, _ = gateway
    monkeypatch.setattr("outbox.transport.LISTING_PAGE", 2)
    item = push(box, tmp_path, ("a.png", png_bytes(seed=1)), ("b.png", png_bytes(seed=2)))
    sync(box, url, token)
    for seed in (3, 4, 5):  # newer records of other items: the item's are on the third page
        push(box, tmp_path, (f"{seed}.png", png_bytes(seed=seed)))
        sync(box, url, token)
    mine = sorted(f.record["mediaId"] for f in box.get(item.id).files)
    created = min(f.record["createdAt"] for f in box.get(item.id).files)
    since = datetime.datetime.fromisoformat(created).timestamp()

    client = GatewayClient(url, token)
    asked: list[dict] = []
    get = client.session.get

    def recording_get(address, **kwargs):
        asked.append(dict(kwargs["params"]))
        return get(address, **kwargs)

    client.session.get = recording_get  # type: ignore[method-assign]
    found = client.records_of_item(box.get(item.id), since=since)  # the oldest one is kept
    assert sorted(r["mediaId"] for r in found) == mine
    assert [a.get("limit") for a in asked] == ["2", "2", "2"]
    assert [a["projectId"] for a in asked] == ["p1"] * 3
    assert (
        "cursor" not in asked[0] and asked[1]["cursor"] and asked[2]["cursor"] != asked[1]["cursor"]
    )

    asked.clear()  # a later since ends the reading at the first older record
    assert client.records_of_item(box.get(item.id), since=since + 3600) == []
    assert len(asked) == 1


def test_reading_records_fails_as_the_listings_answer_says(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()))
    app = ScriptedServer((503, {"Retry-After": "7"}), (400, {}),
                         body_for=lambda status, count: b'{"error": {"code": "bad_cursor"}}')  # fmt: skip
    try:
        client = GatewayClient(app.url, "tok")
        with pytest.raises(Transient) as busy:
            client.records_of_item(item, since=0)
        assert str(busy.value).startswith("listing: 503 bad_cursor")
        assert busy.value.retry_after == 7.0
        with pytest.raises(Permanent, match=r"^listing: 400 bad_cursor"):
            client.records_of_item(item, since=0)
    finally:
        app.close()
    with pytest.raises(Transient) as down:
        GatewayClient(f"http://127.0.0.1:{free_port()}", "tok").records_of_item(item, since=0)
    assert str(down.value) == "listing: ConnectionError" and down.value.unreachable
    silent = SilentServer()
    try:
        with pytest.raises(Transient, match=r"^listing: ReadTimeout$"):
            GatewayClient(silent.url, "tok", timeout=0.2).records_of_item(item, since=0)
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("status", "size_offset", "held"),
    [("stored", 0, True), ("ready", 0, True), ("pending", 0, False), ("stored", 1, False)],
)
def test_a_tus_uploads_record_is_held_only_when_stored_whole(
    tmp_path, box, status, size_offset, held
):
    item = push(box, tmp_path, ("clip.mp4", mp4_bytes(300 * KiB)), threshold=100 * KiB)
    entry = item.files[0]
    box.set_tus_url(item, entry, "http://gw/api/tus/abc123")
    client = GatewayClient("http://gw", "tok")
    asked = []
    answer = {"status": status, "size": entry.size + size_offset, "sha256": entry.sha256}
    client.media = lambda media_id: asked.append(media_id) or answer  # type: ignore[method-assign]
    assert client._held_record(box.get(item.id).files[0]) == (answer if held else None)
    assert asked == ["abc123"]


def test_a_media_id_is_the_last_piece_of_its_upload_url():
    from outbox.transport import _media_id

    assert _media_id("http://gw:8080/api/tus/" + "ab" * 16) == "ab" * 16
    assert _media_id("http://gw:8080/api/tus/" + "ab" * 16 + "/") == "ab" * 16


def test_media_reads_a_record_and_refuses_an_unknown_one(tmp_path, box, gateway):
    url, token, _ = gateway
    item = push(box, tmp_path, ("a.png", png_bytes()))
    sync(box, url, token)
    media_id = box.get(item.id).files[0].record["mediaId"]
    client = GatewayClient(url, token)
    assert client.media(media_id)["mediaId"] == media_id
    with pytest.raises(Permanent, match=r"^status: 404 media_not_found"):
        client.media("0" * 32)
    with pytest.raises(Transient) as caught:
        GatewayClient(f"http://127.0.0.1:{free_port()}", token).media(media_id)
    assert caught.value.unreachable and str(caught.value) == "status: ConnectionError"
    busy = ScriptedServer((503, {"Retry-After": "9"}))
    silent = SilentServer()
    try:
        with pytest.raises(Transient) as caught:
            GatewayClient(busy.url, token).media(media_id)
        assert str(caught.value) == "status: 503" and caught.value.retry_after == 9.0
        with pytest.raises(Transient, match=r"^status: ReadTimeout$"):
            GatewayClient(silent.url, token, timeout=0.2).media(media_id)
    finally:
        busy.close()
        silent.close()


# -- steps ----------------------------------------------------------------------------------------------
@pytest.fixture
def target():
    made = []

    def make(*script):
        made.append(ScriptedServer(*script))
        return made[-1]

    yield make
    for t in made:
        t.close()


RECORDS = [{"mediaId": "m1", "s3Key": "projects/p1/media/m1.png", "url": "http://g/m1.png"}]


def test_a_step_is_sent_rendered_with_its_key_and_without_the_gateways_token(target):
    app = target((201, {}))
    spec = StepSpec("PATCH", app.url + "/records/{{mediaId}}", '{"key": "{{s3Key}}"}',
                    (("Authorization", "Bearer {{env.APP}}"),))  # fmt: skip
    session = requests.Session()
    result = run_step(session, spec, Context(RECORDS, env={"APP": "s3cret"}),
                      idempotency_key="k.step0")  # fmt: skip
    assert (result.status, result.captured) == (201, {})
    got = app.got[0]
    assert (got["method"], got["path"]) == ("PATCH", "/records/m1")
    assert json.loads(got["body"]) == {"key": "projects/p1/media/m1.png"}
    assert got["headers"]["Idempotency-Key"] == "k.step0"
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["headers"]["Authorization"] == "Bearer s3cret"


def test_a_step_with_a_text_body_or_none(target):
    app = target()
    run_step(requests.Session(), StepSpec("POST", app.url + "/t", 'key="{{s3Key}}" done'),
             Context(RECORDS, env={}), idempotency_key="k")  # fmt: skip
    run_step(requests.Session(), StepSpec("DELETE", app.url + "/d"), Context(RECORDS, env={}),
             idempotency_key="k")  # fmt: skip
    assert app.got[0]["body"] == b'key="projects/p1/media/m1.png" done'
    assert app.got[0]["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert app.got[1]["body"] == b"" and "Content-Type" not in app.got[1]["headers"]


def test_a_step_reads_the_environment_and_renders_its_headers(target, monkeypatch):
    app = target((299, {}))
    monkeypatch.setenv("APP_TOKEN", "from-env")
    spec = StepSpec("PUT", app.url + "/r", '{"n": {{size}}}',
                    (("X-Media", "{{mediaId}}"), ("X-Token", "{{env.APP_TOKEN}}")))  # fmt: skip
    records = [{**RECORDS[0], "size": 7}]
    context = Context(records, env=os.environ)
    assert run_step(requests.Session(), spec, context, idempotency_key="k").status == 299
    got = app.got[0]
    assert (got["headers"]["X-Media"], got["headers"]["X-Token"]) == ("m1", "from-env")
    assert got["headers"]["Content-Type"] == "application/json"  # a number placeholder is JSON
    assert json.loads(got["body"]) == {"n": 7}


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [(503, {"Retry-After": "4"}, Transient, 4.0), (429, {}, Transient, None),
     (401, {}, Transient, None), (500, {}, Transient, None), (404, {}, Permanent, None),
     (400, {}, Permanent, None), (300, {}, Permanent, None)],
)  # fmt: skip
def test_a_steps_failures_are_retried_or_final(target, status, headers, error, retry_after):
    app = target((status, headers))
    with pytest.raises(error, match=f"{status}") as caught:
        run_step(requests.Session(), StepSpec("POST", app.url + "/x"), Context(RECORDS),
                 idempotency_key="k")  # fmt: skip
    if error is Transient:
        assert caught.value.retry_after == retry_after


def test_a_step_whose_target_is_down_is_transient_but_the_gateway_is_not_unreachable():
    """(else sync --watch, seeing the gateway healthy, would wake it again at once, forever)"""
    with pytest.raises(Transient, match="ConnectionError") as caught:
        run_step(requests.Session(), StepSpec("POST", f"http://127.0.0.1:{free_port()}/x"),
                 Context(RECORDS), idempotency_key="k")  # fmt: skip
    assert not caught.value.unreachable
    assert str(caught.value).startswith("step  POST http://127.0.0.1:")  # (a step without a name)


def test_a_step_whose_target_does_not_answer_times_out(monkeypatch):
    silent = SilentServer()
    monkeypatch.setattr("outbox.steps.STEP_TIMEOUT", 0.2)
    try:
        with pytest.raises(Transient, match=r": ReadTimeout$") as caught:
            run_step(requests.Session(), StepSpec("POST", silent.url + "/x"), Context(RECORDS),
                     idempotency_key="k")  # fmt: skip
    finally:
        silent.close()
    assert not caught.value.unreachable


def test_a_step_refused_before_it_is_sent_has_no_status_and_no_answer():
    spec = StepSpec("POST", "http://127.0.0.1:9/x", '{"t": "{{env.GW}}"}', name="create")
    with pytest.raises(StepRefused) as caught:
        run_step(requests.Session(), spec, Context(RECORDS, env={"GW": "secret-token"}),
                 idempotency_key="k", withheld=["secret-token"])  # fmt: skip
    assert (caught.value.status, caught.value.answer) == (None, None)


def test_a_claim_on_an_item_changed_since_it_was_read_is_refused(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()))
    stale = box.get(item.id)
    box.claim(item)
    box.schedule_retry(item, delay=0, error="503", unreachable=False)
    box.release(item)
    assert not box.claim(stale)  # another process moved it on: re-read, do not redo
    assert box.claim(box.get(item.id))


def test_steps_resume_at_the_first_not_done_and_the_item_is_done_after_the_last(
    tmp_path, box, gateway, target
):
    url, token, _ = gateway
    app = target((200, {}), (503, {"Retry-After": "0"}))  # step 1 fails once, then all is 200
    steps = [StepSpec("POST", app.url + "/one"), StepSpec("POST", app.url + "/two/{{mediaId}}")]
    item = push(box, tmp_path, ("a.png", png_bytes()), steps=steps)
    events, result = sync(box, url, token)
    assert result.done == [item.id]
    media_id = box.get(item.id).files[0].record["mediaId"]
    assert [g["path"] for g in app.got] == ["/one", f"/two/{media_id}", f"/two/{media_id}"]
    assert [g["headers"]["Idempotency-Key"] for g in app.got] == [
        f"{item.idempotency_key}.step0", *[f"{item.idempotency_key}.step1"] * 2]  # fmt: skip
    assert [s.answer_status for s in box.get(item.id).steps] == [200, 200]
    assert [e["event"] for e in events].count("stored") == 1  # the upload went once
    assert [e["waitSeconds"] for e in events if e["event"] == "retry"] == [0]


# -- the outbox's bookkeeping ---------------------------------------------------------------------------
def test_find_takes_an_id_or_a_unique_prefix_and_nothing_else(tmp_path, box):
    one = push(box, tmp_path, ("a.png", png_bytes()))
    two = push(box, tmp_path, ("b.png", png_bytes()))
    assert box.find(one.id).id == one.id
    assert box.find(one.id[:12]).id == one.id
    common = next(n for n in range(len(one.id)) if one.id[n] != two.id[n])
    from outbox.errors import NoSuchItem

    if common > 0:
        with pytest.raises(NoSuchItem, match="ambiguous: 2 match"):
            box.find(one.id[:common])
    with pytest.raises(NoSuchItem, match="ambiguous: 2 match"):
        box.find("")
    for wild in ("%", "_" * 32, "nope", "\\"):
        with pytest.raises(NoSuchItem, match=f"^no item {re.escape(wild)} in the outbox$"):
            box.find(wild)


def test_an_unreachable_gateway_wakes_what_waited_for_it(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()))
    box.claim(item)
    assert not box.has_unreachable()
    box.schedule_retry(item, delay=300, error="ConnectionError", unreachable=True)
    box.release(item)
    again = box.get(item.id)
    assert again.unreachable and again.attempts == 1
    assert again.next_attempt_at == pytest.approx(box.clock() + 300, abs=5)
    assert box.has_unreachable()
    assert box.due(box.clock()) == []
    assert box.wake_unreachable() == 1
    assert [i.id for i in box.due(box.clock())] == [item.id]
    box.schedule_retry(item, delay=300, error="503", unreachable=False)
    assert not box.has_unreachable() and box.wake_unreachable() == 0


def test_an_item_done_is_no_longer_waiting_for_the_gateway(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()))
    box.claim(item)
    box.mark_stored(item)
    box.schedule_retry(item, delay=0, error="ConnectionError", unreachable=True)  # a step after
    box.release(item)
    assert box.has_unreachable()
    item = box.get(item.id)
    box.claim(item)
    box.mark_done(item)
    assert not box.has_unreachable() and not box.get(item.id).unreachable


def test_progress_and_urls_are_kept_per_file(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()), ("b.png", png_bytes(seed=2)), threshold=1)
    a, b = item.files
    box.set_tus_url(item, b, "http://g/api/tus/x")
    box.set_sent(item, b, 1234)
    again = box.get(item.id).files
    assert (again[0].tus_url, again[0].sent) == (None, 0)
    assert (again[1].tus_url, again[1].sent) == ("http://g/api/tus/x", 1234)
    box.set_tus_url(item, b, None)  # a gone URL: its progress goes with it
    assert (box.get(item.id).files[1].tus_url, box.get(item.id).files[1].sent) == (None, 0)
    box.file_stored(item, [(a, {"mediaId": "m"})])
    assert box.get(item.id).files[0].sent == a.size
    assert box.get(item.id).files[0].record == {"mediaId": "m"}
    assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256


def test_a_creation_whose_answer_was_lost_gets_the_same_upload_again(tmp_path, box, gateway):
    """As after a SIGKILL between the gateway's 201 and the outbox saving the URL: the next
    creation carries the same Idempotency-Key and the gateway answers with the same upload."""
    url, token, svc = gateway
    data = mp4_bytes(300 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    entry = item.files[0]
    client = GatewayClient(url, token, chunk_size=128 * KiB)

    class Killed(Exception):
        pass

    def killed_before_saving(_url):
        raise Killed

    with pytest.raises(Killed):
        client.upload_tus(item, entry, on_url=killed_before_saving, on_restart=no_restart,
                          on_progress=lambda e, s: None)  # fmt: skip
    assert box.get(item.id).files[0].tus_url is None
    _, result = sync(box, url, token, chunk_size=128 * KiB)
    assert result.done == [item.id]
    creations = [h for method, h in svc.tus_requests if method == "POST"]
    assert [h["Idempotency-Key"] for h in creations] == [f"{item.idempotency_key}.file0"] * 2
    page = svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None, status=None)
    assert [r.media_id for r in page.items] == [box.get(item.id).files[0].record["mediaId"]]
    pending = svc.records.count_pending(tenant="", owner="alice", at_most=10)
    assert pending == 0  # no second upload left waiting for its expiry


# -- a gone upload, a stop at a chunk boundary, a replay after the key's lifetime -----------------
class Hooked(JsonLines):
    """JSON lines, with ``on_progress(entry, sent)`` called on each progress report."""

    def __init__(self, on_progress):
        super().__init__(io.StringIO())
        self.on_progress = on_progress

    def progress(self, item, entry, sent):
        super().progress(item, entry, sent)
        self.on_progress(entry, sent)

    def events(self):
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def tus_head(url: str, token: str, upload_url: str) -> requests.Response:
    return requests.head(upload_url, headers={"Authorization": f"Bearer {token}",
                                              "Tus-Resumable": "1.0.0"}, timeout=10)  # fmt: skip


def test_an_upload_gone_between_two_patches_starts_again_under_a_new_key(tmp_path, box, gateway):
    url, token, svc = gateway
    data = mp4_bytes(600 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    removed = []

    def remove_it_after_the_first_chunk(entry, sent):
        if sent == 128 * KiB and not removed:
            gone = requests.delete(entry.tus_url, headers={"Authorization": f"Bearer {token}",
                                   "Tus-Resumable": "1.0.0"}, timeout=10)  # fmt: skip
            assert gone.status_code == 204
            assert tus_head(url, token, entry.tus_url).status_code in (404, 410)
            removed.append(entry.tus_url)

    client = GatewayClient(url, token, chunk_size=128 * KiB)
    result = Syncer(box, client, Hooked(remove_it_after_the_first_chunk)).run(max_wait=0)
    assert result.done == [item.id]
    entry = box.get(item.id).files[0]
    assert entry.generation == 1 and entry.tus_url != removed[0]
    assert stored(svc, entry.record) == data
    assert entry.record["sha256"] in ("", entry.sha256)
    creations = [h["Idempotency-Key"] for method, h in svc.tus_requests if method == "POST"]
    assert creations == [f"{item.idempotency_key}.file0", f"{item.idempotency_key}.file0.r1"]
    page = svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None, status=None)
    assert [r.media_id for r in page.items] == [entry.record["mediaId"]]  # the new one, once
    assert svc.records.count_pending(tenant="", owner="alice", at_most=10) == 0


def test_a_gone_url_whose_upload_was_stored_is_adopted_not_sent_again(tmp_path, box, gateway):
    """The last PATCH stored the file and its answer was lost; by the next attempt the gateway
    answers 404 for the upload URL: the record under that id is the file's, not a new upload."""
    url, token, svc = gateway
    data = mp4_bytes(300 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    _, result = sync(box, url, token, chunk_size=128 * KiB)
    assert result.done == [item.id]
    first = box.get(item.id).files[0]
    box._conn.execute("UPDATE files SET record = NULL")
    box._conn.execute("UPDATE items SET state = 'waiting'")
    gone = ScriptedServer(otherwise=(404, {}))  # every tus request: 404, no body

    client = GatewayClient(url, token, chunk_size=128 * KiB)
    again = box.get(item.id)
    box.claim(again)
    entry = again.files[0]
    entry.tus_url = gone.url + "/api/tus/" + first.record["mediaId"]
    try:
        record = client.upload_tus(again, entry, on_url=lambda u: None, on_restart=no_restart,
                                   on_progress=lambda e, s: None)  # fmt: skip
    finally:
        gone.close()
    assert [g["method"] for g in gone.got] == ["HEAD"]
    assert record["mediaId"] == first.record["mediaId"]
    assert [m for m, _ in svc.tus_requests].count("POST") == 1  # no new upload


def test_stop_ends_the_sync_at_a_chunk_boundary_and_the_next_resumes(tmp_path, box, gateway):
    url, token, svc = gateway
    data = mp4_bytes(700 * KiB)
    item = push(box, tmp_path, ("clip.mp4", data), threshold=100 * KiB)
    later = push(box, tmp_path, ("a.png", png_bytes()))
    client = GatewayClient(url, token, chunk_size=128 * KiB)
    syncer = Syncer(box, client, Hooked(lambda e, sent: sent >= 256 * KiB and syncer.stop()),
                    concurrency=1)  # fmt: skip
    result = syncer.run(max_wait=0)
    assert result.interrupted and result.done == [] and result.unfinished == 2
    stopped = box.get(item.id)
    assert (stopped.state, stopped.attempts, stopped.holder) == (State.WAITING, 0, None)
    assert stopped.last_error.startswith("interrupted: stopped at byte 262144")
    assert stopped.next_attempt_at <= box.clock()  # due again at once
    entry = stopped.files[0]
    assert entry.sent == 256 * KiB
    assert int(tus_head(url, token, entry.tus_url).headers["Upload-Offset"]) == 256 * KiB
    assert box.get(later.id).state == State.QUEUED  # not started once stopping
    assert [m for m, _ in svc.tus_requests].count("PATCH") == 2

    events, result = sync(box, url, token, chunk_size=128 * KiB)
    assert sorted(result.done) == sorted([item.id, later.id])
    sent = [e["sent"] for e in events if e["event"] == "progress" and e["item"] == item.id]
    assert sent[0] == 256 * KiB
    assert stored(svc, box.get(item.id).files[0].record) == data
    assert [m for m, _ in svc.tus_requests].count("PATCH") == 6  # 2 + the 4 left, none twice


def test_stop_cuts_a_form_post_and_the_gateway_keeps_nothing(tmp_path, box, gateway):
    url, token, svc = gateway
    item = push(box, tmp_path, ("a.png", png_bytes(400_000)))
    client = GatewayClient(url, token)
    syncer = Syncer(box, client, Hooked(lambda e, sent: sent > 0 and syncer.stop()))
    result = syncer.run(max_wait=0)
    assert result.interrupted
    stopped = box.get(item.id)
    assert (stopped.state, stopped.attempts) == (State.WAITING, 0)
    assert stopped.last_error == "interrupted: stopped while sending the form"
    page = svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None, status=None)
    assert page.items == []

    # The client is gone at once; the gateway's request ends when it reads the cut body, a moment
    # later, and rolls back: looked at until then.
    def kept() -> list[Path]:
        return list(Path(svc.settings.storage_url).rglob("*.png"))

    assert poll(lambda: not kept(), timeout=10), kept()
    # Its idempotency key may be held a moment longer (409, retried after Retry-After).
    result = Syncer(box, client, JsonLines(io.StringIO())).run(max_wait=60)
    assert result.done == [item.id]
    page = svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None, status=None)
    assert len(page.items) == 1


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_after_the_keys_lifetime_stored_records_are_found_not_stored_again(tmp_path, gateway):
    """The answer to the first POST was lost and the gateway's 24 h Idempotency-Key lifetime
    passed: a replay with the key would store the files again, so the outbox looks them up."""
    url, token, svc = gateway
    start = time.time()
    clock = Clock(start)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        client = GatewayClient(url, token)

        def sync_at_clock():
            return Syncer(box, client, JsonLines(io.StringIO()), clock=clock).run(max_wait=0)

        item = push(box, tmp_path, ("a.png", png_bytes(30_000)), ("b.png", png_bytes(30_000)))
        other = push(box, tmp_path, ("a.png", png_bytes(30_000)))  # the same bytes, its own item
        assert sorted(sync_at_clock().done) == sorted([item.id, other.id])
        first = [f.record["mediaId"] for f in box.get(item.id).files]
        # As after an answer lost 25 h ago: no records written, its first POST long past.
        box._conn.execute("UPDATE files SET record = NULL WHERE item_id = ?", (item.id,))
        box._conn.execute("UPDATE items SET state = 'waiting' WHERE id = ?", (item.id,))
        assert box.get(item.id).first_sent_at == start
        clock.now = start + 25 * 3600
        posts = list(svc.upload_posts)
        assert sync_at_clock().done == [item.id]
        assert svc.upload_posts == posts  # nothing was sent again
        assert [f.record["mediaId"] for f in box.get(item.id).files] == first
        page = svc.records.list_media(tenant="", project_id="p1", limit=10, cursor=None,
                                      status=None)  # fmt: skip
        assert len(page.items) == 3  # the item's two and the other's one: kept apart

        # Within the key's lifetime the replay is left to the key (no listing is read) ...
        box._conn.execute("UPDATE files SET record = NULL WHERE item_id = ?", (item.id,))
        box._conn.execute("UPDATE items SET state = 'waiting', first_sent_at = ? WHERE id = ?",
                          (clock.now - 3600, item.id))  # fmt: skip
        assert sync_at_clock().done == [item.id]
        assert svc.upload_posts == [*posts, item.idempotency_key]
        assert [f.record["mediaId"] for f in box.get(item.id).files] == first

        # ... and an item whose first POST never reached the gateway is sent after all.
        never = push(box, tmp_path, ("c.png", png_bytes(20_000, seed=9)))
        box._conn.execute("UPDATE items SET first_sent_at = ? WHERE id = ?", (start, never.id))
        assert sync_at_clock().done == [never.id]
        assert svc.upload_posts == [*posts, item.idempotency_key, never.idempotency_key]


@pytest.mark.parametrize(("since_first", "looked_up"), [(KEY_TTL - CLOCK_SLACK, True),
                                                          (KEY_TTL - CLOCK_SLACK - 1, False)])  # fmt: skip
def test_records_are_looked_up_from_an_hour_before_the_keys_lifetime_ends(
    tmp_path, gateway, since_first, looked_up
):
    url, token, svc = gateway
    start = time.time()
    clock = Clock(start)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        client = GatewayClient(url, token)
        item = push(box, tmp_path, ("a.png", png_bytes(30_000)))
        assert Syncer(box, client, JsonLines(io.StringIO()), clock=clock).run(max_wait=0).done
        first = box.get(item.id).files[0].record["mediaId"]
        box._conn.execute("UPDATE files SET record = NULL WHERE item_id = ?", (item.id,))
        box._conn.execute("UPDATE items SET state = 'waiting' WHERE id = ?", (item.id,))
        clock.now = start + since_first
        posts = list(svc.upload_posts)
        assert Syncer(box, client, JsonLines(io.StringIO()), clock=clock).run(max_wait=0).done
        assert svc.upload_posts == (posts if looked_up else [*posts, item.idempotency_key])
        assert box.get(item.id).files[0].record["mediaId"] == first  # stored once either way


def test_records_found_late_are_matched_by_bytes_then_by_name_and_must_all_be_there(tmp_path, box):
    same = png_bytes(30_000)
    item = push(box, tmp_path, ("a.png", same), ("b.png", same))
    box.claim(item)
    item = box.get(item.id)
    box._conn.execute("UPDATE items SET first_sent_at = 0 WHERE id = ?", (item.id,))
    item.first_sent_at = 0.0
    a, b = item.files

    def record(entry, media_id):
        return {"mediaId": media_id, "originalName": entry.name, "sha256": entry.sha256,
                "size": entry.size, "status": "stored"}  # fmt: skip

    listing = [record(b, "m-b")]  # a's record was deleted since
    listed = types.SimpleNamespace(records_of_item=lambda item, since: list(listing))
    syncer = Syncer(box, listed, JsonLines(io.StringIO()), clock=lambda: 10 * KEY_TTL)
    with pytest.raises(Permanent) as caught:
        syncer._adopt_records(item, [a, b])
    assert str(caught.value) == (
        "the gateway holds 1 of this item's 2 form files (a POST stores all or none: some were "
        "deleted since); nothing is sent again"
    )
    listing.append(record(a, "m-a"))  # newest first: b's before a's, the same bytes
    assert syncer._adopt_records(item, [a, b])
    assert [f.record["mediaId"] for f in box.get(item.id).files] == ["m-a", "m-b"]


@pytest.mark.parametrize("persist", [False, True])
def test_progress_renews_the_lease_each_quarter_of_its_life_and_saves_only_tus_offsets(
    tmp_path, persist
):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock, lease_ttl=120.0) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        box.claim(item)
        entry = item.files[0]
        renewals, saved = [], []
        box.renew = lambda ids: renewals.append((clock.now, list(ids)))  # type: ignore[method-assign]
        set_sent = box.set_sent
        box.set_sent = lambda i, e, sent: saved.append(sent) or set_sent(i, e, sent)  # type: ignore[method-assign]
        syncer = Syncer(
            box, GatewayClient("http://gw", "tok"), JsonLines(io.StringIO()), clock=clock
        )
        report = syncer._progress(item, persist=persist) if persist else syncer._progress(item)
        item.lease_renewed_at = None
        for now, sent in [(1000.0, 0), (1029.0, 10), (1030.0, 20), (1059.9, 20), (1060.0, 20)]:
            clock.now = now
            report(entry, sent)
        assert renewals == [(1000.0, [item.id]), (1030.0, [item.id]), (1060.0, [item.id])]
        assert item.lease_renewed_at == 1060.0
        assert saved == ([10, 20] if persist else [])  # only a change is saved


def test_a_syncer_runs_at_most_its_concurrency_and_reads_the_environment_by_default(tmp_path, box):
    with pytest.raises(ValueError, match=r"^concurrency must be at least 1$"):
        Syncer(box, GatewayClient("http://gw", "tok"), JsonLines(io.StringIO()), concurrency=0)
    items = [push(box, tmp_path, (f"{n}.png", png_bytes(seed=n))) for n in range(3)]
    active, most = [0], [0]
    lock = threading.Lock()

    class OneAtATime:
        def upload_form(self, item, entries, on_progress, should_stop):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.05)  # long enough for a second worker to overlap, if there were one
            with lock:
                active[0] -= 1
            return stored_answer(entries)

    syncer = Syncer(box, OneAtATime(), JsonLines(io.StringIO()), concurrency=1)  # type: ignore[arg-type]
    assert syncer.env is os.environ
    assert sorted(syncer.run(max_wait=0).done) == sorted(i.id for i in items)
    assert most[0] == 1


def test_a_run_without_watch_ends_at_once_when_the_gateway_cannot_be_reached(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()))
    down = GatewayClient(f"http://127.0.0.1:{free_port()}", "tok")
    result = Syncer(box, down, JsonLines(io.StringIO())).run(max_wait=3600)  # would wait an hour
    assert result.done == [] and result.failed == []
    waiting = box.get(item.id)
    assert waiting.state == State.WAITING and waiting.unreachable
    assert (result.offline, result.interrupted) == (True, False)


def test_an_item_still_sending_when_the_gateway_is_unreachable_and_stop_comes_is_waited_for(
    tmp_path, box
):
    unreachable = push(box, tmp_path, ("a.png", png_bytes(seed=1)))
    sending = push(box, tmp_path, ("b.png", png_bytes(seed=2)))

    class Gateway:
        def upload_form(self, item, entries, on_progress, should_stop):
            if item.id == unreachable.id:
                raise Transient("connection refused", unreachable=True)
            # Still sending when the other item finds the gateway unreachable: the run waits
            # for this one (it may still be stored) and then sees the stop.
            assert poll(lambda: box.get(unreachable.id).holder is None, timeout=10)
            time.sleep(0.2)  # the run's loop is waiting for this item by now
            syncer.stop()
            return stored_answer(entries)

    syncer = Syncer(box, Gateway(), JsonLines(io.StringIO()), concurrency=2)  # type: ignore[arg-type]
    result = syncer.run(max_wait=0, poll=0.01)
    assert (result.done, result.failed, result.unfinished) == ([sending.id], [], 1)
    assert (result.interrupted, result.offline) == (True, False)  # stopped, whatever else
    assert box.get(sending.id).state == State.DONE
    assert box.get(unreachable.id).state == State.WAITING


def test_an_item_running_without_progress_has_its_lease_renewed_each_quarter_of_its_life(
    tmp_path,
):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock, lease_ttl=120.0) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        renewals: list[tuple[float, list[str]]] = []
        renew = box.renew
        box.renew = lambda ids: renewals.append((clock.now, list(ids))) or renew(ids)  # type: ignore[method-assign]

        def looked_at_for_a_while() -> None:
            time.sleep(0.3)  # many turns of the run's loop (poll 0.01 s)

        class Gateway:  # a form post that sends for two quarters of the lease, reporting nothing
            def upload_form(self, item, entries, on_progress, should_stop):
                clock.now = 1029.999
                looked_at_for_a_while()
                assert renewals == []
                clock.now = 1030.0
                assert poll(lambda: renewals, timeout=10)
                clock.now = 1059.999
                looked_at_for_a_while()
                assert renewals == [(1030.0, [item.id])]
                clock.now = 1060.0
                assert poll(lambda: len(renewals) == 2, timeout=10)
                looked_at_for_a_while()
                return stored_answer(entries)

        syncer = Syncer(box, Gateway(), JsonLines(io.StringIO()), clock=clock)  # type: ignore[arg-type]
        assert syncer.run(max_wait=0, poll=0.01).done == [item.id]
        assert renewals == [(1030.0, [item.id]), (1060.0, [item.id])]
        assert box.get(item.id).state == State.DONE


def test_a_long_upload_renews_its_lease_as_it_goes(tmp_path, gateway):
    """Each chunk here takes 50 s of the outbox's clock; the lease (120 s) never goes stale, so
    a process in another container sharing the outbox never takes the item over meanwhile."""
    url, token, svc = gateway
    clock = Clock(time.time())
    ages = []
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("clip.mp4", mp4_bytes(700 * KiB)), threshold=100 * KiB)

        def slow_chunk(entry, sent):
            ages.append(clock.now - box.get(item.id).lease_renewed_at)
            clock.now += 50

        client = GatewayClient(url, token, chunk_size=128 * KiB)
        result = Syncer(box, client, Hooked(slow_chunk), clock=clock).run(max_wait=0)
        assert result.done == [item.id]
        assert stored(svc, box.get(item.id).files[0].record) == mp4_bytes(700 * KiB)
    assert len(ages) == 8  # offset 0, six chunks, and the file's end as the item is stored
    # Renewed whenever 30 s (a quarter of the lease) had passed: never older than that plus
    # one chunk. (Without renewal the ages would be 0, 50, 100, ... 350.)
    assert max(ages) < 120 / 4 + 50


class StoresAll:
    """A gateway that stores every form post, after ``refusals`` (raised in turn) for the first."""

    def __init__(self, *refusals: Exception) -> None:
        self.refusals = list(refusals)
        self.posts = 0

    def upload_form(self, item, entries, on_progress, should_stop):
        self.posts += 1
        if self.refusals:
            raise self.refusals.pop(0)
        return stored_answer(entries)

    def healthy(self) -> bool:
        return True


def watched(box: Outbox, gateway: StoresAll, clock: Clock, until) -> tuple[SyncResult, list]:
    """``run(watch=True, poll=2)`` on a fake clock that each sleep moves on; stopped once
    ``until(sleeps)`` holds after a sleep (or by a guard after 20 s, if the loop never sleeps)."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds
        if until(sleeps):
            syncer.stop()

    syncer = Syncer(box, gateway, JsonLines(io.StringIO()), clock=clock, sleep=sleep)  # type: ignore[arg-type]
    guard = threading.Timer(20, syncer.stop)
    guard.start()
    try:
        return syncer.run(watch=True, poll=2.0), sleeps
    finally:
        guard.cancel()


def test_watch_looks_again_each_poll_and_sends_what_arrives_until_stopped(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        arrived: list = []

        def until(sleeps) -> bool:
            if len(sleeps) == 1:  # nothing was queued: an item arrives while the run waits
                arrived.append(push(box, tmp_path, ("a.png", png_bytes())))
            return box.get(arrived[0].id).state == State.DONE

        result, sleeps = watched(box, StoresAll(), clock, until)
        assert (result.done, result.interrupted) == ([arrived[0].id], True)
        assert sleeps == [2.0, 2.0]  # nothing to do, then done: a poll each


def test_watch_waits_for_a_retry_a_poll_at_a_time(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        gateway = StoresAll(Transient("503 busy", retry_after=5.0))
        result, sleeps = watched(
            box, gateway, clock, lambda _: box.get(item.id).state == State.DONE
        )
        assert result.done == [item.id] and gateway.posts == 2
        assert sleeps == [2.0, 2.0, 1.0, 2.0]  # 5 s to the retry, a poll at most each time


def test_watch_wakes_what_waits_for_an_unreachable_gateway_once_it_is_healthy(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        gateway = StoresAll(Transient("connection refused", unreachable=True))
        result, sleeps = watched(
            box, gateway, clock, lambda _: box.get(item.id).state == State.DONE
        )
        # not after its backoff: at once, the gateway being healthy again
        assert result.done == [item.id] and gateway.posts == 2
        assert sleeps == [2.0]


def test_a_run_looks_again_each_poll_at_an_item_another_process_holds_until_max_wait(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        elsewhere = dataclasses.replace(lease.current(), pid_ns="pid:[1]", pid=1)
        box._conn.execute(
            "UPDATE items SET lease = ?, lease_renewed_at = ?", (elsewhere.text(), clock.now)
        )
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.now += seconds

        gateway = StoresAll()
        syncer = Syncer(box, gateway, JsonLines(io.StringIO()), clock=clock, sleep=sleep)  # type: ignore[arg-type]
        result = syncer.run(max_wait=4.0, poll=2.0)
        # a look after 2 s and after 4 s (still within max_wait), none that would end past it
        assert sleeps == [2.0, 2.0]
        assert (result.done, result.unfinished, gateway.posts) == ([], 1, 0)
        assert box.get(item.id).state == State.QUEUED


@pytest.mark.parametrize(
    "given, base",
    [
        ("http://127.0.0.1:9000/PREFIX/", "http://127.0.0.1:9000/PREFIX"),
        ("http://127.0.0.1:9000/PREFIX//", "http://127.0.0.1:9000/PREFIX"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_the_gateways_url_is_kept_without_its_trailing_slashes(given, base):
    assert GatewayClient(given, "tok").base_url == base


def backoff_after(failures: int, seed: int) -> float:
    return Backoff().delay(failures, random.Random(seed))


@pytest.mark.parametrize(
    "raised, state, error, attempts, unreachable, event",
    [
        (ValueError("bad answer"), State.WAITING, "ValueError: bad answer", 1, False, "retry"),
        (Transient("503 busy"), State.WAITING, "503 busy", 1, False, "retry"),
        (Transient("refused", unreachable=True), State.WAITING, "refused", 1, True, "retry"),
        (Interrupted("stopped at byte 5"), State.WAITING, "interrupted: stopped at byte 5", 0,
         False, "interrupted"),
        (Permanent("415 unsupported_type"), State.FAILED, "415 unsupported_type", 1, False,
         "failed"),
        (StepRefused("step create: 422", status=422, answer="no"), State.FAILED,
         "step create: 422: no", 1, False, "failed"),
    ],
)  # fmt: skip
def test_each_outcome_of_an_attempt_is_kept_and_told_as_it_is(
    tmp_path, raised, state, error, attempts, unreachable, event
):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        lines = io.StringIO()
        syncer = Syncer(box, StoresAll(raised), JsonLines(lines), clock=clock, rng=random.Random(7))  # type: ignore[arg-type]
        assert syncer.sync_item(box.get(item.id)) == state
        kept = box.get(item.id)
        assert (kept.state, kept.last_error, kept.attempts) == (state, error, attempts)
        assert (kept.unreachable, kept.holder) == (unreachable, None)
        told = [json.loads(line) for line in lines.getvalue().splitlines()][-1]
        if event == "retry":
            delay = backoff_after(1, 7)
            assert kept.next_attempt_at == 1000.0 + delay
            assert told == {"event": "retry", "item": item.id, "waitSeconds": round(delay, 3),
                            "error": error}  # fmt: skip
        else:
            assert told == {"event": event, "item": item.id, "error": error}
            if event == "interrupted":
                assert kept.next_attempt_at == 1000.0  # due again at once


def test_a_transients_retry_after_is_its_delay(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        syncer = Syncer(box, StoresAll(Transient("429", retry_after=42.5)), JsonLines(io.StringIO()),
                        clock=clock)  # type: ignore[arg-type]  # fmt: skip
        syncer.sync_item(box.get(item.id))
        assert box.get(item.id).next_attempt_at == 1042.5


@pytest.mark.parametrize("error", [ValueError, Transient])
def test_the_backoff_counts_the_failures_so_far(tmp_path, error):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        gateway = StoresAll(*(error(f"bad {n}") for n in range(3)))
        syncer = Syncer(box, gateway, JsonLines(io.StringIO()), clock=clock, rng=random.Random(3))  # type: ignore[arg-type]
        expected = random.Random(3)
        for failures in (1, 2, 3):
            syncer.sync_item(box.get(item.id))
            waiting = box.get(item.id)
            assert waiting.attempts == failures
            assert waiting.next_attempt_at == clock.now + Backoff().delay(failures, expected)


def test_a_refused_token_leaves_the_item_due_at_once_and_ends_the_run(tmp_path):
    clock = Clock(1000.0)
    with Outbox(tmp_path / "o", disk_reserve=0, clock=clock) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))
        syncer = Syncer(box, StoresAll(TokenRefused("401 token_expired")), JsonLines(io.StringIO()),
                        clock=clock)  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises(TokenRefused):
            syncer.run(max_wait=0)
        kept = box.get(item.id)
        assert (kept.state, kept.attempts, kept.unreachable) == (State.WAITING, 0, False)
        assert (kept.next_attempt_at, kept.last_error) == (1000.0, "401 token_expired")


def test_an_item_whose_lease_cannot_be_given_back_still_ends_its_attempt(tmp_path, monkeypatch):
    with Outbox(tmp_path / "o", disk_reserve=0) as box:
        item = push(box, tmp_path, ("a.png", png_bytes()))

        def release(item):
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(box, "release", release)
        syncer = Syncer(box, StoresAll(), JsonLines(io.StringIO()))  # type: ignore[arg-type]
        assert syncer.sync_item(box.get(item.id)) == State.DONE


def test_a_stopped_sync_does_not_begin_a_step(tmp_path, box):
    item = push(box, tmp_path, ("a.png", png_bytes()),
                steps=[StepSpec("POST", "http://127.0.0.1:9/create", "{}", name="create",
                                before=True)])  # fmt: skip
    syncer = Syncer(box, StoresAll(), JsonLines(io.StringIO()))  # type: ignore[arg-type]
    syncer.stop()
    assert syncer.sync_item(box.get(item.id)) == State.WAITING
    assert box.get(item.id).last_error == "interrupted: stopped before step create"
