"""The offline-first client against the real gateway: gunicorn behind nginx (embedded storage),
the ``outbox`` CLI as a separate process, killed with SIGKILL where it hurts."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from e2e_harness import gateway_stack, sha256_of, write_file
from faultproxy import BUSY_RETRY_AFTER, FaultProxy
from scripted_server import ScriptedServer
from support import ROOT, free_port, jpeg_bytes, mp4_bytes, png_bytes

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
MP4_HEAD = mp4_bytes(64)[:24]


def cli_env(outbox_dir: Path, stack, gateway_url: str | None = None) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "GATEWAY_"))},
        "OUTBOX_DIR": str(outbox_dir),
        "OUTBOX_GATEWAY": gateway_url or stack.url,
        "OUTBOX_TOKEN": stack.token,
    }


def outbox(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "outbox", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def media_of_run(stack, run: str) -> list[dict]:
    """The gateway's records carrying this run's marker field."""
    found, cursor = [], None
    while True:
        params = {"projectId": "p1", "limit": "100", **({"cursor": cursor} if cursor else {})}
        page = requests.get(stack.url + "/api/media", params=params, headers=stack.auth, timeout=30)
        page.raise_for_status()
        body = page.json()
        found += [m for m in body["items"] if m["metadata"].get("run") == run]
        cursor = body.get("nextCursor")
        if not cursor:
            return found


def stored_bytes_sha256(stack, record: dict) -> str:
    return sha256_of(stack.media_root / record["s3Key"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("outbox-stack")) as running:
        yield running


# -- offline, then online ------------------------------------------------------------------------------
def test_pushed_while_the_gateway_is_down_everything_is_stored_once_when_it_is_up(tmp_path):
    run = uuid.uuid4().hex
    box = tmp_path / "outbox"
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = random.Random(5)
    makers = [png_bytes, jpeg_bytes, mp4_bytes]
    small = []
    for n in range(17):
        make = makers[n % 3]
        small.append(samples / f"s{n}.{['png', 'jpg', 'mp4'][n % 3]}")
        small[-1].write_bytes(make(rng.randrange(1_000, 300_000), seed=n))
    big = [write_file(samples / f"b{n}.mp4", MP4_HEAD, size) for n, size in
           enumerate((17 * MiB, 24 * MiB, 40 * MiB))]  # fmt: skip
    groups = [[p] for p in small[:11]] + [small[11:14], small[14:17]] + [[p] for p in big]
    closed = f"http://127.0.0.1:{free_port()}"  # the gateway is not running yet
    offline_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "GATEWAY_"))},
        "OUTBOX_DIR": str(box), "OUTBOX_GATEWAY": closed, "OUTBOX_TOKEN": "not-yet",
    }  # fmt: skip
    item_ids = []
    for group in groups:
        done = outbox(offline_env, "push", *map(str, group), "-p", "p1", "-f", f"run={run}",
                      "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        item_ids.append(json.loads(done.stdout)["id"])

    offline = outbox(offline_env, "sync", "--json")  # no --max-wait: it stops at once
    assert offline.returncode == 75, offline.stderr
    tried = [e["item"] for e in events(offline.stdout) if e["event"] == "retry"]
    assert 1 <= len(tried) <= 2 and set(tried) <= set(item_ids)  # -j 2: what ran, then stop
    assert events(offline.stdout)[-1] == {"event": "offline"}
    stats = json.loads(outbox(offline_env, "stats", "--json").stdout)
    assert stats["states"]["uploading"]["items"] == 0  # nothing runs, so nothing says so
    assert stats["states"]["waiting"]["items"] == len(tried)
    waiting = stats["states"]["queued"]["files"] + stats["states"]["waiting"]["files"]
    assert waiting == 20
    assert stats["outboxBytes"] == sum(p.stat().st_size for p in small + big)

    with gateway_stack(tmp_path / "stack") as up:
        env = cli_env(box, up)
        synced = outbox(env, "sync", "--json", "-j", "3")
        assert synced.returncode == 0, synced.stderr + up.logs()
        assert sorted({e["item"] for e in events(synced.stdout) if e["event"] == "done"}) == sorted(
            item_ids
        )
        records = media_of_run(up, run)
        assert len(records) == 20  # every file, once
        by_name = {r["originalName"]: r for r in records}
        assert sorted(by_name) == sorted(p.name for p in small + big)
        for path in small + big:
            record = by_name[path.name]
            # every record carries the SHA-256 of its bytes, a tus upload sent in several
            # PATCHes too (the hash's state travels in the record between requests)
            assert (record["sha256"], record["sha256State"]) == (sha256_of(path), "received")
            assert stored_bytes_sha256(up, record) == sha256_of(path)
        listed = json.loads(outbox(env, "queue", "--all", "--json").stdout)
        assert {i["state"] for i in listed} == {"done"}
        assert {f["record"]["mediaId"] for i in listed for f in i["files"]} == {
            r["mediaId"] for r in records
        }
        transports = {f["name"]: f["transport"] for i in listed for f in i["files"]}
        assert {transports[p.name] for p in big} == {"tus"}
        assert {transports[p.name] for p in small} == {"form"}

        again = outbox(env, "sync", "--json")  # nothing left to do, nothing sent again
        assert again.returncode == 0
        assert len(media_of_run(up, run)) == 20
        purged = outbox(env, "purge", "--done")
        assert purged.returncode == 0 and purged.stdout.startswith(f"purged {len(groups)} items")
        assert list((box / "files").iterdir()) == []


# -- killed mid-file --------------------------------------------------------------------------------
def tus_bytes_received(stack) -> int:
    return sum(
        line["requestLength"]
        for line in stack.access_log_lines()
        if line["uri"].startswith("/api/tus/") and line["method"] in ("POST", "PATCH")
    )


def test_a_client_killed_mid_upload_resumes_and_the_server_holds_one_object(tmp_path, stack):
    run = uuid.uuid4().hex
    size = 200 * MiB
    big = write_file(tmp_path / "big.mp4", MP4_HEAD, size)
    env = cli_env(tmp_path / "outbox", stack)
    pushed = outbox(env, "push", str(big), "-p", "p1", "-f", f"run={run}", "--json")
    item = json.loads(pushed.stdout)["id"]
    before = tus_bytes_received(stack)

    first = subprocess.Popen(
        [sys.executable, "-m", "outbox", "sync", "--json", "--chunk-size", "8MiB"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    sent_at_kill = 0
    try:
        for line in first.stdout:
            event = json.loads(line)
            if event["event"] == "progress" and event["sent"] >= 80 * MiB:
                sent_at_kill = event["sent"]
                break
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert sent_at_kill >= 80 * MiB
    status = json.loads(outbox(env, "status", item, "--json").stdout)
    # Its process is gone: the item waits (and says why), it is not "uploading".
    assert status["state"] == "waiting" and status["heldBy"] is None
    assert status["lastError"] == (f"interrupted: process {first.pid} on {socket.gethostname()} "
                                   "stopped during an attempt")  # fmt: skip
    assert status["files"][0]["tusUrl"]
    assert status["files"][0]["sent"] >= 80 * MiB

    second = outbox(env, "sync", "--json", "--chunk-size", "8MiB")
    assert second.returncode == 0, second.stderr
    progress = [e["sent"] for e in events(second.stdout) if e["event"] == "progress"]
    assert progress[0] >= 80 * MiB  # resumed where the server stood, not from 0
    records = media_of_run(stack, run)
    assert len(records) == 1
    assert stored_bytes_sha256(stack, records[0]) == sha256_of(big)
    received = tus_bytes_received(stack) - before
    assert size <= received < 1.1 * size
    assert json.loads(outbox(env, "status", item, "--json").stdout)["state"] == "done"


def test_a_client_killed_between_the_answer_and_its_commit_does_not_store_twice(tmp_path, stack):
    """The form path's window: the gateway stored the files, the client died before it wrote
    that down. The replay carries the same Idempotency-Key and gets the first answer."""
    run = uuid.uuid4().hex
    env = cli_env(tmp_path / "outbox", stack)
    files = [tmp_path / "a.png", tmp_path / "b.jpg"]
    files[0].write_bytes(png_bytes(40_000))
    files[1].write_bytes(jpeg_bytes(50_000))
    item = json.loads(outbox(env, "push", *map(str, files), "-p", "p1", "-f", f"run={run}",
                             "--json").stdout)  # fmt: skip
    done = outbox(env, "sync", "--json")
    assert done.returncode == 0, done.stderr
    first = media_of_run(stack, run)
    assert len(first) == 2
    # What a SIGKILL after the gateway's answer and before the outbox's commit leaves behind:
    # the item uploading, no record written. The next sync sends the same request again.
    with sqlite3.connect(tmp_path / "outbox" / "outbox.db") as conn:
        conn.execute("UPDATE files SET record = NULL, sent = 0")
        conn.execute("UPDATE items SET state = 'uploading'")
    replay = outbox(env, "sync", "--json")
    assert replay.returncode == 0, replay.stderr
    assert sorted(r["mediaId"] for r in media_of_run(stack, run)) == sorted(
        r["mediaId"] for r in first
    )
    again = json.loads(outbox(env, "status", item["id"], "--json").stdout)
    assert sorted(f["record"]["mediaId"] for f in again["files"]) == sorted(
        r["mediaId"] for r in first
    )


def test_a_sync_killed_at_random_points_stores_every_file_exactly_once(tmp_path, stack):
    run = uuid.uuid4().hex
    env = cli_env(tmp_path / "outbox", stack)
    files = []
    for n in range(12):
        path = tmp_path / f"f{n}.png"
        path.write_bytes(png_bytes(20_000 + n * 7_000, seed=n))
        files.append(path)
    groups = [[p] for p in files[:9]] + [files[9:12]]
    big = write_file(tmp_path / "big.mp4", MP4_HEAD, 6 * MiB + 123)
    for group in [*groups, [big]]:
        pushed = outbox(env, "push", *map(str, group), "-p", "p1", "-f", f"run={run}",
                        "--tus-threshold", "1MiB")  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
    rng = random.Random(11)
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox", "sync", "--json", "-j", "3",
             "--chunk-size", "1MiB"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        last = rng.randrange(1, 25)  # dies after this many events: anywhere in the work
        for seen, _line in enumerate(proc.stdout, start=1):
            if seen == last:
                kills += 1
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert kills >= 4  # most rounds died mid-work (the last ones may find little left)
    final = outbox(env, "sync", "--json", "--chunk-size", "1MiB")
    assert final.returncode == 0, final.stderr
    records = media_of_run(stack, run)
    assert sorted(r["originalName"] for r in records) == sorted(p.name for p in [*files, big])
    for record in records:
        assert stored_bytes_sha256(stack, record) == sha256_of(tmp_path / record["originalName"])
    assert {i["state"] for i in json.loads(outbox(env, "queue", "--all", "--json").stdout)} == {
        "done"
    }


# -- the gateway is busy ----------------------------------------------------------------------------
def test_a_503_with_retry_after_is_waited_out_then_the_upload_goes_through(tmp_path, stack):
    run = uuid.uuid4().hex
    proxy = FaultProxy(stack.url).start()
    try:
        is_upload = lambda r: r.method == "POST" and r.path == "/api/upload"
        rule = proxy.add(is_upload, "busy", times=1)
        env = cli_env(tmp_path / "outbox", stack, gateway_url=proxy.url)
        photo = tmp_path / "p.png"
        photo.write_bytes(png_bytes(30_000))
        outbox(env, "push", str(photo), "-p", "p1", "-f", f"run={run}")
        done = outbox(env, "sync", "--json")
        assert done.returncode == 0, done.stderr
        assert rule.hits == 1
        retries = [e for e in events(done.stdout) if e["event"] == "retry"]
        assert [e["waitSeconds"] for e in retries] == [BUSY_RETRY_AFTER]
        assert "503 shutting_down" in retries[0]["error"]
        sent = proxy.requests(is_upload)
        assert len(sent) == 2
        assert sent[1].at - sent[0].at >= BUSY_RETRY_AFTER
        assert sent[0].headers["idempotency-key"] == sent[1].headers["idempotency-key"]
        assert len(media_of_run(stack, run)) == 1
    finally:
        proxy.stop()


# -- linked steps ------------------------------------------------------------------------------------
def test_a_step_whose_target_is_down_is_retried_without_repeating_the_upload(tmp_path, stack):
    run = uuid.uuid4().hex
    port = free_port()
    env = {**cli_env(tmp_path / "outbox", stack), "APP_TOKEN": "app-secret"}
    photo = tmp_path / "p.png"
    photo.write_bytes(png_bytes(30_000))
    then = (f"PATCH http://127.0.0.1:{port}/records/7 "
            '{"photoKey": "{{s3Key}}", "photoUrl": "{{url}}", "sha256": "{{sha256}}",'
            ' "bytes": {{size}}}')  # fmt: skip
    pushed = outbox(env, "push", str(photo), "-p", "p1", "-f", f"run={run}", "--then", then,
                    "--json")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    item = json.loads(pushed.stdout)

    first = outbox(env, "sync", "--json", "--max-wait", "0")
    assert first.returncode == 75
    assert [e["event"] for e in events(first.stdout) if e["event"] in ("stored", "retry")] == [
        "stored", "retry"]  # fmt: skip
    state = json.loads(outbox(env, "status", item["id"], "--json").stdout)
    assert state["state"] == "stored"
    assert "ConnectionError" in state["lastError"] and state["files"][0]["record"]
    assert len(media_of_run(stack, run)) == 1

    app = ScriptedServer(port=port)  # the user's own API
    try:
        second = outbox(env, "sync", "--json")
        assert second.returncode == 0, second.stderr
        kinds = [e["event"] for e in events(second.stdout)]
        assert "stored" not in kinds and "progress" not in kinds  # the upload was not repeated
        assert kinds[-1] == "done"
        records = media_of_run(stack, run)
        assert len(records) == 1
        assert len(app.got) == 1
        got = app.got[0]
        assert got["path"] == "/records/7"
        assert json.loads(got["body"]) == {"photoKey": records[0]["s3Key"], "photoUrl": records[0]["url"],
                               "sha256": records[0]["sha256"], "bytes": 30_000}  # fmt: skip
        assert got["headers"]["Idempotency-Key"] == f"{item['idempotencyKey']}.step0"
        assert "Authorization" not in got["headers"]  # the gateway's token stays with the gateway
        final = json.loads(outbox(env, "status", item["id"], "--json").stdout)
        assert final["state"] == "done" and final["steps"][0]["status"] == 200
    finally:
        app.close()


# -- sync --watch ----------------------------------------------------------------------------------------
def test_watch_sends_what_is_pushed_and_goes_on_when_the_gateway_comes_back(tmp_path, stack):
    run = uuid.uuid4().hex
    proxy = FaultProxy(stack.url).start()
    watcher = None
    try:
        env = cli_env(tmp_path / "outbox", stack, gateway_url=proxy.url)
        photo = tmp_path / "p.png"
        photo.write_bytes(png_bytes(30_000))
        watcher = subprocess.Popen(
            [sys.executable, "-m", "outbox", "sync", "--watch", "--json"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        lines = watcher.stdout

        def next_event(kind: str) -> dict:
            for line in lines:
                event = json.loads(line)
                if event["event"] == kind:
                    return event
            raise AssertionError(f"sync --watch ended before a {kind!r} event")

        first = json.loads(outbox(env, "push", str(photo), "-p", "p1", "-f", f"run={run}",
                                  "--json").stdout)  # fmt: skip
        assert next_event("done")["item"] == first["id"]

        down = proxy.add(lambda r: True, "reset")  # the gateway is gone: every connection drops
        second = json.loads(outbox(env, "push", str(photo), "-p", "p1", "-f", f"run={run}",
                                   "--json").stdout)  # fmt: skip
        retry = next_event("retry")
        assert retry["item"] == second["id"] and "ConnectionError" in retry["error"]
        assert down.hits >= 1
        proxy.clear()  # it is back
        assert next_event("done")["item"] == second["id"]
        assert len(media_of_run(stack, run)) == 2
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        proxy.stop()


# -- Ctrl-C ------------------------------------------------------------------------------------------
def tus_patches(stack, upload_url: str) -> int:
    path = "/api/tus/" + upload_url.rsplit("/", 1)[1]
    return sum(1 for line in stack.access_log_lines()
               if line["method"] == "PATCH" and line["uri"] == path)  # fmt: skip


def test_ctrl_c_stops_at_a_chunk_boundary_with_state_saved_and_the_next_sync_resumes(
    tmp_path, stack
):
    run = uuid.uuid4().hex
    chunk, size = MiB, 24 * MiB + 321
    big = write_file(tmp_path / "big.mp4", MP4_HEAD, size)
    env = cli_env(tmp_path / "outbox", stack)
    item = json.loads(outbox(env, "push", str(big), "-p", "p1", "-f", f"run={run}",
                             "--json").stdout)["id"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "outbox", "sync", "--json", "--chunk-size", "1MiB"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress" and seen[-1]["sent"] >= 6 * MiB and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            break
    seen += [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=60) == 130
    stderr = proc.stderr.read()
    assert "stopping at the next chunk boundary" in stderr and "Traceback" not in stderr
    assert seen[-1]["event"] == "interrupted" and seen[-1]["item"] == item
    status = json.loads(outbox(env, "status", item, "--json").stdout)
    assert (status["state"], status["attempts"], status["heldBy"]) == ("waiting", 0, None)
    saved = status["files"][0]["sent"]
    assert saved % chunk == 0 and 6 * MiB <= saved < size  # a chunk boundary, before the end
    assert (seen[-2]["event"], seen[-2]["sent"]) == ("progress", saved)  # the last one, saved
    upload_url = status["files"][0]["tusUrl"]
    head = requests.head(upload_url, headers={**stack.auth, "Tus-Resumable": "1.0.0"}, timeout=30)
    assert int(head.headers["Upload-Offset"]) == saved  # the gateway agrees
    assert tus_patches(stack, upload_url) == saved // chunk  # no chunk was cut or sent twice

    again = outbox(env, "sync", "--json", "--chunk-size", "1MiB")
    assert again.returncode == 0, again.stderr
    assert next(e["sent"] for e in events(again.stdout) if e["event"] == "progress") == saved
    assert tus_patches(stack, upload_url) == -(-size // chunk)  # every chunk once in all
    records = media_of_run(stack, run)
    assert len(records) == 1
    assert stored_bytes_sha256(stack, records[0]) == sha256_of(big)
