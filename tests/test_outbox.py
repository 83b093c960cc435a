"""The offline-first client without a gateway: the outbox on disk, its states and limits, the
CLI's answers to a damaged or locked outbox, steps, backoff, Retry-After, advice.

A few tests talk HTTP to a small loopback server standing in for the gateway (a stand-in: the
answers under test, 503 with Retry-After and a 401, are what the real gateway sends; the
real-gateway tests are in test_outbox_sync.py)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from PIL import Image

from outbox import advise, chain, lease
from outbox.codes import CODE_OUTCOMES, Outcome, outcome
from outbox.errors import (
    AlreadyStored,
    DiskFull,
    InvalidItem,
    NoSpaceLeft,
    OutboxDamaged,
    OutboxFull,
    OutboxLocked,
    Permanent,
    TokenRefused,
    Transient,
    UploadGone,
)
from outbox.lease import Holder
from outbox.report import JsonLines
from outbox.store import Incoming, Outbox, State, StateCount, StepSpec, Transport
from outbox.sync import Backoff, Syncer
from outbox.transport import (
    GatewayClient,
    raise_for_answer,
    retry_after_seconds,
    verify_record,
)

from scripted_server import ScriptedServer
from support import ROOT, free_port, jpeg_bytes, png_bytes

MiB = 1024 * 1024


def outbox_cli(outbox_dir: Path, *args: str, env: dict[str, str] | None = None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "outbox", *args],
        cwd=ROOT,
        env={**os.environ, "OUTBOX_DIR": str(outbox_dir), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def box(tmp_path):
    with Outbox(tmp_path / "outbox", disk_reserve=0) as outbox:
        yield outbox


def sample(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the outbox on disk ----------------------------------------------------------------------------
def test_push_copies_the_file_so_a_later_edit_is_not_what_gets_sent(tmp_path, box):
    original = sample(tmp_path, "cat.png", png_bytes(50_000))
    item = box.push([Incoming(original, "cat.png")], project="p1", tus_threshold=MiB)
    original.write_bytes(b"edited afterwards")
    entry = item.files[0]
    assert entry.path.read_bytes() == png_bytes(50_000)
    assert entry.sha256 == hashlib.sha256(png_bytes(50_000)).hexdigest()
    assert entry.size == 50_000
    assert entry.path.parent == box.files_dir / item.id
    assert item.state == State.QUEUED
    assert item.idempotency_key == f"outbox-{item.id}"


def test_files_larger_than_the_threshold_go_over_tus_and_the_rest_by_form(tmp_path, box):
    at = sample(tmp_path, "at.png", png_bytes(4096))
    over = sample(tmp_path, "over.png", png_bytes(4097))
    item = box.push(
        [Incoming(at, "at.png"), Incoming(over, "over.png")], project="p1", tus_threshold=4096
    )
    assert [f.transport for f in item.files] == [Transport.FORM, Transport.TUS]


def test_fields_and_steps_come_back_as_they_went_in(tmp_path, box):
    path = sample(tmp_path, "a.png", png_bytes())
    spec = StepSpec("PATCH", "http://app/r/1", '{"k": "{{s3Key}}"}', (("X-A", "b"),))
    item = box.push(
        [Incoming(path, "a.png")],
        project="p1",
        fields=[("caption", "two words"), ("caption", "again")],
        steps=[spec],
        tus_threshold=MiB,
    )
    again = box.get(item.id)
    assert again.fields == [("caption", "two words"), ("caption", "again")]
    assert again.steps[0].spec == dataclasses.replace(spec, name="step0")  # named at push
    assert not again.steps[0].done


def test_a_push_of_nothing_or_of_a_missing_file_queues_nothing(tmp_path, box):
    with pytest.raises(InvalidItem, match=r"^nothing to push: give at least one file$"):
        box.push([], project="p1", tus_threshold=MiB)
    missing = tmp_path / "nope.png"
    with pytest.raises(InvalidItem, match=f"^{re.escape(str(missing))} is not a readable file$"):
        box.push([Incoming(missing, "nope.png")], project="p1", tus_threshold=MiB)
    assert box.items() == []
    assert list(box.files_dir.iterdir()) == []


def test_the_outbox_limit_is_exact(tmp_path):
    path = sample(tmp_path, "a.png", png_bytes(1000))
    with Outbox(tmp_path / "o", max_bytes=2000, disk_reserve=0) as box:
        box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)  # 2000: at the limit
        full = (r"^the outbox would hold 3000 bytes, over its limit of 2000 \(2000 queued now\); "
                r"sync or purge first, or raise OUTBOX_MAX_BYTES$")  # fmt: skip
        with pytest.raises(OutboxFull, match=full):
            box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        assert len(box.items()) == 2
        assert box.used_bytes() == 2000


def test_a_push_that_would_leave_the_disk_below_its_reserve_is_refused(tmp_path):
    path = sample(tmp_path, "a.png", png_bytes(1000))

    # More than is free: any copy goes below it, whatever the machine's other users write or
    # delete meanwhile (the disk is shared).
    free = shutil.disk_usage(tmp_path).free
    with Outbox(tmp_path / "o", disk_reserve=free + 1024**3) as box:
        with pytest.raises(DiskFull, match="would leave less than") as caught:
            box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        assert caught.value.exit_status == 5
        assert box.items() == []


def dead_holder() -> Holder:
    """The identity of a process that ran and ended (read while it ran)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    holder = lease.of_process(proc.pid)
    proc.communicate(b"")
    assert holder is not None and lease.of_process(proc.pid) is None
    return holder


def in_another_container() -> Holder:
    """A holder in another PID namespace: alive for as long as its lease is renewed."""
    return dataclasses.replace(lease.current(), pid_ns="pid:[1]", pid=1)


def reused_pid_holder() -> Holder:
    """A holder whose PID runs now, as another process: this one, started at another tick."""
    me = lease.current()
    return dataclasses.replace(me, started=me.started - 1)


def insert_raw_item(root: Path, item_id: str, state: str, holder: Holder | None, renewed=0.0):
    with sqlite3.connect(root / "outbox.db") as conn:
        conn.execute(
            "INSERT INTO items (id, project, fields, idempotency_key, state, next_attempt_at,"
            " lease, lease_renewed_at, created_at, updated_at)"
            " VALUES (?, 'p1', '[]', ?, ?, 0, ?, ?, 0, 0)",
            (item_id, "k-" + item_id, state, holder.text() if holder else None, renewed),
        )
    conn.close()
    (root / "files" / item_id).mkdir()
    (root / "files" / item_id / "0-a.png").write_bytes(b"half")


def test_a_push_killed_midway_is_forgotten_on_the_next_open_but_a_live_one_is_not(tmp_path):
    root = tmp_path / "o"
    path = sample(tmp_path, "a.png", png_bytes())
    with Outbox(root, disk_reserve=0) as box:
        kept = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    insert_raw_item(root, "dead", "queuing", dead_holder())
    insert_raw_item(root, "reused", "queuing", reused_pid_holder())
    insert_raw_item(root, "alive", "queuing", lease.current())
    with Outbox(root, disk_reserve=0) as box:
        ids = {r[0] for r in box._conn.execute("SELECT id FROM items")}
        assert ids == {kept.id, "alive"}
        assert not (root / "files" / "dead").exists()
        assert not (root / "files" / "reused").exists()
        assert (root / "files" / "alive").exists()
        assert [i.id for i in box.items()] == [kept.id]  # a push in progress is not listed


def test_a_damaged_database_is_an_error_that_changes_nothing(tmp_path):
    root = tmp_path / "o"
    path = sample(tmp_path, "a.png", png_bytes())
    with Outbox(root, disk_reserve=0) as box:
        item = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    db = root / "outbox.db"
    for leftover in root.glob("outbox.db-*"):
        leftover.unlink()
    damaged = b"this is not a database" * 100
    db.write_bytes(damaged)
    with pytest.raises(OutboxDamaged, match=r"outbox\.db"):
        Outbox(root)
    done = outbox_cli(root, "queue")
    assert done.returncode == 3
    assert "damaged" in done.stderr and str(db) in done.stderr
    assert "Traceback" not in done.stderr
    assert db.read_bytes() == damaged
    assert (root / "files" / item.id / "0-a.png").read_bytes() == png_bytes()


def test_a_database_damaged_inside_is_caught_by_the_check_on_open(tmp_path):
    root = tmp_path / "o"
    path = sample(tmp_path, "a.png", png_bytes())
    with Outbox(root, disk_reserve=0) as box:
        for _ in range(30):
            box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = root / "outbox.db"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[page : page + 8] = b"\x0d\xff\xff\xff\xff\xff\xff\xff"  # page 2's b-tree header
    db.write_bytes(bytes(data))
    with pytest.raises(OutboxDamaged):
        Outbox(root)


def test_a_locked_outbox_refuses_a_push_clearly_and_leaves_no_half_item(tmp_path):
    root = tmp_path / "o"
    path = sample(tmp_path, "a.png", png_bytes())
    with Outbox(root, disk_reserve=0) as box:
        first = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    holder = sqlite3.connect(root / "outbox.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with Outbox(root, disk_reserve=0, lock_timeout=0.2) as box:
            assert [i.id for i in box.items()] == [first.id]  # reading goes on (WAL)
            with pytest.raises(OutboxLocked, match="locked by another process"):
                box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        done = outbox_cli(root, "--lock-timeout", "0.2", "push", str(path), "--project", "p1")
        assert done.returncode == 3, done.stderr
        assert "locked by another process" in done.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Outbox(root, disk_reserve=0) as box:
        assert [i.id for i in box.items()] == [first.id]
    assert sorted(p.name for p in (root / "files").iterdir()) == [first.id]


def test_state_changes_follow_the_transition_table(tmp_path, box):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    with pytest.raises(ValueError, match="cannot go from queued to done"), box._write() as conn:
        box._set_state(conn, item.id, State.QUEUED, State.DONE)
    with pytest.raises(ValueError, match="no longer uploading"):
        box.mark_stored(item)  # it is still queued
    assert box.claim(item)
    assert box.get(item.id).state == State.UPLOADING
    box.mark_stored(item)
    box.mark_done(item)
    with pytest.raises(InvalidItem, match="not failed"):
        box.retry(box.get(item.id))


def test_retry_puts_a_failed_item_back_where_it_stopped(tmp_path, box):
    path = sample(tmp_path, "a.png", png_bytes())
    uploading = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    box.claim(uploading)
    box.mark_failed(uploading, "415 unsupported_type")
    failed = box.get(uploading.id)
    assert (failed.state, failed.last_error, failed.attempts) == (
        State.FAILED, "415 unsupported_type", 1)  # fmt: skip
    assert box.retry(failed).state == State.QUEUED

    stepped = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB,
                       steps=[StepSpec("POST", "http://x/")])  # fmt: skip
    box.claim(stepped)
    box.file_stored(stepped, [(stepped.files[0], {"mediaId": "m"})])
    box.mark_stored(stepped)
    box.mark_failed(stepped, "step 400")
    again = box.retry(box.get(stepped.id))
    assert (again.state, again.attempts) == (State.STORED, 0)


def test_a_claim_held_by_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path, box):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = lease.of_process(sleeper.pid)
        box._conn.execute("UPDATE items SET lease = ?", (holder.text(),))
        assert box.due(box.clock()) == []
        assert not box.claim(item)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [i.id for i in box.due(box.clock())] == [item.id]
    assert box.claim(item)
    assert box.get(item.id).holder == lease.current()


def test_stats_count_items_files_and_bytes_per_state(tmp_path, box):
    a = sample(tmp_path, "a.png", png_bytes(1000))
    b = sample(tmp_path, "b.png", png_bytes(3000))
    one = box.push([Incoming(a, "a.png"), Incoming(b, "b.png")], project="p1", tus_threshold=MiB)
    two = box.push([Incoming(a, "a.png")], project="p1", tus_threshold=MiB)
    box.claim(two)
    box.mark_failed(two, "x")
    numbers = box.stats()
    assert numbers.by_state[State.QUEUED].items == 1
    assert numbers.by_state[State.QUEUED].files == 2
    assert numbers.by_state[State.QUEUED].bytes == 4000
    assert numbers.by_state[State.FAILED].bytes == 1000
    assert numbers.by_state[State.DONE].items == 0
    assert numbers.outbox_bytes == 5000
    assert numbers.oldest_unfinished_at == one.created_at
    assert numbers.disk_free > 0


def test_purge_forgets_only_done_items_and_frees_their_copies(tmp_path, box):
    path = sample(tmp_path, "a.png", png_bytes(1000))
    done = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    waiting = box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
    box.claim(done)
    box.mark_stored(done)
    box.mark_done(done)
    assert box.purge_done() == (1, 1000)
    assert [i.id for i in box.items()] == [waiting.id]
    assert not (box.files_dir / done.id).exists()
    assert (box.files_dir / waiting.id).exists()


# -- errors, backoff, Retry-After --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error"),
    [(401, TokenRefused), (408, Transient), (409, Transient), (423, Transient),
     (425, Transient), (429, Transient), (500, Transient), (503, Transient),
     (400, Permanent), (403, Permanent), (404, Permanent), (413, Permanent), (415, Permanent),
     (422, Permanent)],
)  # fmt: skip
def test_every_answer_is_classified(status, error):
    body = json.dumps({"error": {"code": "some_code", "message": "why"}}).encode()
    with pytest.raises(error, match=f"{status} some_code why"):
        raise_for_answer(status, {}, body, what="upload")


def test_a_success_is_not_an_error():
    for status in (200, 201, 204, 299):
        raise_for_answer(status, {}, b"", what="x")
    for status in (199, 300):
        with pytest.raises((Permanent, Transient)):
            raise_for_answer(status, {}, b"", what="x")


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(404, "upload_not_found", UploadGone), (409, "upload_stored", AlreadyStored)],
)
def test_a_tus_upload_gone_or_stored_says_so_with_the_answer(status, code, error):
    body = json.dumps({"error": {"code": code, "message": "why"}}).encode()
    with pytest.raises(error) as caught:
        raise_for_answer(status, {}, body, what="tus", tus=True)
    assert str(caught.value) == f"tus: {status} {code} why"


@pytest.mark.parametrize(
    ("exc", "no_space"),
    [
        (OSError(errno.ENOSPC, "full"), True),
        (OSError(errno.EDQUOT, "quota"), True),
        (OSError(errno.EACCES, "denied"), False),
        (ValueError("other"), False),
    ],
)
def test_only_a_full_disk_or_quota_counts_as_no_space(exc, no_space):
    from outbox.store import _no_space

    assert _no_space(exc) is no_space


def test_permanent_errors_keep_the_gateways_code():
    with pytest.raises(Permanent) as caught:
        raise_for_answer(415, {}, b'{"error": {"code": "unsupported_type"}}', what="upload")
    assert caught.value.code == "unsupported_type"


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds(later, now=now.timestamp()) == 90.0
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds(earlier, now=now.timestamp()) == 0.0
    with pytest.raises(Transient) as caught:
        raise_for_answer(503, {"Retry-After": "12"}, b"", what="x")
    assert caught.value.retry_after == 12.0


def test_backoff_doubles_with_equal_jitter_up_to_its_cap():
    backoff = Backoff(base=1.0, cap=60.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (30, 60)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling * 0.45  # jittered over the upper half


# -- steps -------------------------------------------------------------------------------------------
def test_then_is_parsed_and_its_placeholders_checked_at_push():
    spec = chain.parse_step('patch https://app/r/{{mediaId}} {"u": "{{url}}"}', before=False)
    assert (spec.method, spec.url, spec.body, spec.name, spec.before) == (
        "PATCH", "https://app/r/{{mediaId}}", '{"u": "{{url}}"}', "", False)  # fmt: skip
    assert chain.parse_step("POST http://x/{{files.1.s3Key}}", before=False).body is None
    named = chain.parse_step("create: post http://x/ {}", before=True)
    assert (named.name, named.method, named.body, named.before) == ("create", "POST", "{}", True)
    for bad in ("GET http://x/", "POST", "POST ftp://x/", "create: GET http://x/", "create:"):
        with pytest.raises(InvalidItem):
            chain.parse_step(bad, before=False)
    for bad in ("POST http://x/{{files.2.url}}", "POST http://x/{{nope}}",
                "POST http://x/{{files.0.secret}}"):  # fmt: skip
        with pytest.raises(InvalidItem):
            chain.check(chain.named([chain.parse_step(bad, before=False)]), files=2, fields=[])
    chain.check(chain.named([spec]), files=2, fields=[])


def ctx(records, env=None, captured=None):
    return chain.Context(records=records, env=env or {}, captured=captured)


def test_placeholders_are_escaped_for_where_they_stand():
    records = [{"url": 'http://g/a b"c', "s3Key": "p/k 1.png", "size": 5}, {"mediaId": "m2"}]
    body = chain.render('{"u": "{{url}}", "n": {{size}}, "m": "{{files.1.mediaId}}"}', ctx(records),
                        quote=chain.json_escape)  # fmt: skip
    assert json.loads(body) == {"u": 'http://g/a b"c', "n": 5, "m": "m2"}
    url = chain.render("http://app/{{s3Key}}", ctx(records), quote=chain.url_escape)
    assert url == "http://app/p/k%201.png"
    assert chain.render("{{env.TOKEN}}", ctx(records, {"TOKEN": "t"})) == "t"
    with pytest.raises(Transient, match="no MISSING"):
        chain.render("{{env.MISSING}}", ctx(records))


# -- sync against a stand-in gateway ----------------------------------------------------------------
def gateway_answer(status: int, count: int) -> bytes:
    """The gateway's answer shapes: a stored record, or an error."""
    if status < 300:
        return json.dumps(
            {"success": True, "files": [{"mediaId": f"m{count}", "url": "u"}]}
        ).encode()
    code = {401: "invalid_token", 500: "internal_error"}.get(status, "shutting_down")
    return json.dumps({"success": False, "error": {"code": code, "message": "busy"}}).encode()


def StandIn(script):
    return ScriptedServer(*script, body_for=gateway_answer)


class FakeTime:
    def __init__(self):
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_sync_waits_as_retry_after_says_then_sends_the_same_key_again(tmp_path):
    stand_in = StandIn([(503, {"Retry-After": "7"}), (201, {})])
    fake = FakeTime()
    try:
        with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock) as box:
            item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                            project="p1", tus_threshold=MiB)  # fmt: skip
            lines = io.StringIO()
            syncer = Syncer(box, GatewayClient(stand_in.url, "tok"), JsonLines(lines),
                            clock=fake.clock, sleep=fake.sleep, backoff=Backoff(base=100))  # fmt: skip
            result = syncer.run(max_wait=60)
            assert result.done == [item.id]
            assert fake.sleeps == [7.0]
            events = [json.loads(line) for line in lines.getvalue().splitlines()]
            assert [e["waitSeconds"] for e in events if e["event"] == "retry"] == [7.0]
            keys = [r["headers"]["Idempotency-Key"] for r in stand_in.got]
            assert keys == [item.idempotency_key] * 2
            assert stand_in.got[0]["body"] == stand_in.got[1]["body"].replace(
                stand_in.got[1]["body"][2:34], stand_in.got[0]["body"][2:34]
            )  # the same form, whatever the boundary
            assert box.get(item.id).state == State.DONE
            assert box.get(item.id).attempts == 1
    finally:
        stand_in.close()


def test_sync_without_retry_after_backs_off_and_gives_up_past_max_wait(tmp_path):
    stand_in = StandIn([(500, {}), (500, {}), (500, {})])
    fake = FakeTime()
    try:
        with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock) as box:
            item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                            project="p1", tus_threshold=MiB)  # fmt: skip
            syncer = Syncer(box, GatewayClient(stand_in.url, "tok"), JsonLines(io.StringIO()),
                            clock=fake.clock, sleep=fake.sleep, backoff=Backoff(base=10, cap=40),
                            rng=random.Random(1))  # fmt: skip
            result = syncer.run(max_wait=14)
            # attempt 1 fails -> wait in [5, 10]; attempt 2 fails -> [10, 20]: past 14 s.
            assert len(stand_in.got) == 2
            assert len(fake.sleeps) == 1 and 5 <= fake.sleeps[0] <= 10
            assert result.unfinished == 1 and result.done == []
            again = box.get(item.id)
            assert again.state == State.WAITING and again.attempts == 2
            assert again.holder is None  # nothing runs: it waits for its next attempt
            assert "500" in again.last_error
    finally:
        stand_in.close()


def test_a_refused_token_stops_the_sync_and_keeps_the_item(tmp_path):
    stand_in = StandIn([(401, {})])
    try:
        with Outbox(tmp_path / "o", disk_reserve=0) as box:
            item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                            project="p1", tus_threshold=MiB)  # fmt: skip
            syncer = Syncer(box, GatewayClient(stand_in.url, "bad"), JsonLines(io.StringIO()))
            with pytest.raises(TokenRefused):
                syncer.run()
            again = box.get(item.id)
            assert again.state == State.WAITING and again.attempts == 0
            assert again.holder is None and "401" in again.last_error
            assert box.due(box.clock())  # still due: nothing was held against the item
    finally:
        stand_in.close()


def test_the_cli_never_takes_a_token_from_the_command_line(tmp_path):
    done = outbox_cli(tmp_path / "o", "sync", "--gateway", "http://127.0.0.1:9", "--token", "x")
    assert done.returncode == 2
    done = outbox_cli(tmp_path / "o", "sync", "--gateway", "http://127.0.0.1:9",
                      env={"OUTBOX_TOKEN": ""})  # fmt: skip
    assert done.returncode == 2 and "OUTBOX_TOKEN" in done.stderr


def test_push_rejects_reserved_or_malformed_fields(tmp_path):
    path = sample(tmp_path, "a.png", png_bytes())
    for bad in ("projectId=x", "sha256=x", "no-equals", "sp ace=x"):
        done = outbox_cli(tmp_path / "o", "push", str(path), "-p", "p1", "--field", bad)
        assert done.returncode == 2, bad
    assert outbox_cli(tmp_path / "o", "queue").stdout == ""


# -- advice ------------------------------------------------------------------------------------------
def photo(path: Path, size=(640, 480)) -> Path:
    image = Image.effect_mandelbrot(size, (-2, -1.2, 1, 1.2), 60).convert("RGB")
    image.save(path, "PNG")
    return path


def test_advise_measures_each_encoding_and_leaves_the_file_alone(tmp_path):
    path = photo(tmp_path / "m.png")
    before = path.read_bytes()
    advice = advise.advise(path)
    assert advice is not None and advice.kind == "image" and advice.original_size == len(before)
    found = advice.encodings
    assert [e.format for e in found] == sorted(["webp", "avif"], key=lambda f: next(
        e.size for e in found if e.format == f))  # fmt: skip
    for encoding in found:
        assert 0 < encoding.size < encoding.original_size == len(before)
        assert encoding.saving == pytest.approx(1 - encoding.size / len(before))
    assert path.read_bytes() == before
    assert advise.advise(sample(tmp_path, "x.png", png_bytes())) is None  # not decodable


def test_push_optimize_queues_the_smaller_copy_and_keeps_the_original(tmp_path):
    path = photo(tmp_path / "m.png")
    before = path.read_bytes()
    done = outbox_cli(tmp_path / "o", "push", str(path), "-p", "p1", "--optimize", "--json")
    assert done.returncode == 0, done.stderr
    item = json.loads(done.stdout)
    queued = item["files"][0]
    assert queued["name"].endswith((".webp", ".avif"))
    assert queued["size"] < len(before) * (1 - advise.MIN_SAVING)
    assert path.read_bytes() == before
    with Image.open(next((tmp_path / "o" / "files" / item["id"]).iterdir())) as copy:
        assert copy.size == (640, 480)


def test_optimize_keeps_a_file_it_cannot_shrink(tmp_path):
    tiny = tmp_path / "t.webp"
    Image.new("RGB", (8, 8), "white").save(tiny, "WEBP", quality=10)
    assert advise.optimize(tiny, tmp_path) is None
    assert advise.optimize(sample(tmp_path, "j.jpg", jpeg_bytes()), tmp_path) is None


# -- what a sync tells its user -----------------------------------------------------------------------
def test_json_lines_report_progress_at_most_once_per_percent(tmp_path, box):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes(1000)), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    out = io.StringIO()
    report = JsonLines(out)
    entry = item.files[0]
    for sent in (0, 5, 9, 10, 15, 1000, 1000):
        report.progress(item, entry, sent)
    sent = [json.loads(line)["sent"] for line in out.getvalue().splitlines()]
    assert sent == [0, 10, 1000]


def test_the_terminal_shows_bars_and_says_what_happened(tmp_path, box):
    from rich.console import Console

    from outbox.report import Terminal

    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes(1000)), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    report = Terminal(console)
    report.item_started(item)
    report.progress(item, item.files[0], 500)
    assert report._progress.tasks[0].completed == 500  # everything
    assert report._progress.tasks[1].completed == 500  # the file
    item.files[0].record = {"url": "http://g/media/x.png"}
    report.item_stored(item)
    report.retry(item, 2.5, "503 busy")
    report.close()
    text = console.file.getvalue()
    assert "stored" in text and "http://g/media/x.png" in text
    assert "retry" in text and "2.5 s: 503 busy" in text


# -- the outbox's changes, in memory and on disk (closing what mutation testing found) -------------
def test_every_change_is_on_the_item_in_memory_as_well_as_on_disk(tmp_path, box):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes(1000)), "a.png")],
                    project="p1", tus_threshold=1, steps=[StepSpec("POST", "http://x/")])  # fmt: skip
    entry, step = item.files[0], item.steps[0]
    box.set_sent(item, entry, 10)
    box.set_tus_url(item, entry, "http://g/api/tus/u")
    assert (entry.tus_url, entry.sent) == ("http://g/api/tus/u", 0)
    box.set_sent(item, entry, 500)
    assert entry.sent == 500
    box.claim(item)
    box.schedule_retry(item, delay=5, error="503", unreachable=True)
    assert (item.attempts, item.state, item.last_error) == (1, State.WAITING, "503")
    assert item.next_attempt_at == box.get(item.id).next_attempt_at
    box.release(item)
    assert item.holder is None
    assert box.claim(box.get(item.id))
    item = box.get(item.id)
    entry, step = item.files[0], item.steps[0]
    assert item.state == State.UPLOADING
    box.schedule_retry(item, delay=5, error="503", unreachable=True)
    assert item.attempts == 2 == box.get(item.id).attempts
    box.schedule_retry(item, delay=0, error="interrupted", unreachable=False, counts=False)
    assert item.attempts == 2 == box.get(item.id).attempts
    box.claim(item)
    box.restart_file(item, entry)
    assert (entry.tus_url, entry.sent, entry.generation) == (None, 0, 1)
    assert box.get(item.id).files[0].generation == 1
    box.sending(item)
    first = item.first_sent_at
    assert first == box.get(item.id).first_sent_at is not None
    box.sending(item)
    assert box.get(item.id).first_sent_at == first  # the first send is what counts
    box.file_stored(item, [(entry, {"mediaId": "m"})])
    assert (entry.sent, entry.record) == (1000, {"mediaId": "m"})
    box.mark_stored(item)
    box.step_done(item, step, 202)
    assert step.answer_status == 202 and step.done
    box.mark_done(item)
    done = box.get(item.id)
    assert (done.state, done.last_error, done.unreachable) == (State.DONE, None, False)


def test_a_failure_clears_the_wait_for_the_gateway_and_retry_makes_it_due_now(tmp_path):
    fake = FakeTime()
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        box.claim(item)
        box.schedule_retry(item, delay=600, error="ConnectionError", unreachable=True)
        box.mark_failed(item, "415 unsupported_type")
        failed = box.get(item.id)
        assert (failed.unreachable, failed.last_error) == (False, "415 unsupported_type")
        fake.now += 10  # the retry scheduled 600 s ahead is not what counts any more
        again = box.retry(failed)
        assert again.next_attempt_at == fake.now
        box.release(item)
        assert [i.id for i in box.due(fake.now)] == [item.id]


def test_purge_copes_with_copies_already_gone_and_stats_are_exact(tmp_path):
    with Outbox(tmp_path / "o", disk_reserve=0, max_bytes=10_000) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes(1000)), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        box.claim(item)
        box.mark_stored(item)
        box.mark_done(item)
        import shutil

        shutil.rmtree(box.files_dir / item.id)
        assert box.purge_done() == (1, 1000)
        numbers = box.stats()
        assert numbers.max_bytes == 10_000
        assert numbers.by_state == {s: StateCount(0, 0, 0) for s in State if s != State.QUEUING}


def test_a_holder_runs_while_its_process_runs_and_asking_sends_no_signal(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        holder = lease.of_process(sleeper.pid)
        assert holder is not None and holder.local
        assert holder.running(renewed_at=0, now=1e12)  # local: the lease's age does not count
        assert sleeper.poll() is None  # asking sent no signal that ends it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not holder.running(renewed_at=1e12, now=1e12)  # freshly renewed, but gone
    assert lease.of_process(sleeper.pid) is None


def test_error_texts_say_what_and_why():
    with pytest.raises(Permanent) as caught:
        raise_for_answer(415, {}, b'{"error": {"code": "unsupported_type"}}', what="upload")
    assert str(caught.value) == "upload: 415 unsupported_type"
    with pytest.raises(Transient) as caught:
        raise_for_answer(502, {}, b"\xff" * 300, what="status")
    assert str(caught.value) == "status: 502  " + "\ufffd" * 200
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 110 <= retry_after_seconds(later) <= 120  # against the real clock


def test_then_errors_name_the_spec():
    with pytest.raises(
        InvalidItem, match=r"^--then 'GET http://x/': expected '\[NAME:\] METHOD URL"
    ):
        chain.parse_step("GET http://x/", before=False)
    with pytest.raises(InvalidItem, match=r"^--before 'POST ftp://x/': the URL must be http"):
        chain.parse_step("POST ftp://x/", before=True)
    with pytest.raises(InvalidItem, match=r"^step 'step0': unknown placeholder \{\{nope\}\}$"):
        chain.check(chain.named([chain.parse_step("POST http://x/{{nope}}", before=False)]),
                    files=1, fields=[])  # fmt: skip
    env_body = chain.parse_step("POST http://x/ {{env.TOKEN}}", before=False)
    assert env_body.body == "{{env.TOKEN}}"
    chain.check(chain.named([env_body]), files=1, fields=[])


def test_placeholder_values_missing_or_with_url_characters():
    records = [{"url": None, "s3Key": "a:b/c d"}]
    assert chain.render("[{{url}}][{{mediaId}}]", ctx(records)) == "[][]"
    assert chain.render("{{s3Key}}", ctx(records), quote=chain.url_escape) == "a:b/c%20d"


# -- errors by the gateway's code ---------------------------------------------------------------------
EXCEPTION_OF = {
    Outcome.RETRY: Transient, Outcome.RESTART: UploadGone, Outcome.STORED: AlreadyStored,
    Outcome.TOKEN: TokenRefused, Outcome.FAIL: Permanent,
}  # fmt: skip


def test_the_code_table_names_every_code_the_gateway_declares_and_no_other():
    from gateway.errors import CATALOGUE

    assert set(CODE_OUTCOMES) == set(CATALOGUE)


@pytest.mark.parametrize("code", sorted(CODE_OUTCOMES))
def test_each_gateway_code_is_classified_by_the_table(code):
    from gateway.errors import CATALOGUE

    status = CATALOGUE[code].status
    body = json.dumps({"error": {"code": code, "message": "m"}}).encode()
    expected = EXCEPTION_OF[CODE_OUTCOMES[code]]
    with pytest.raises(expected) as caught:
        raise_for_answer(status, {"Retry-After": "3"}, body, what="x", tus=True)
    assert type(caught.value) is expected  # not a subclass standing in for another outcome
    if expected is Permanent:
        assert caught.value.code == code
    if expected is Transient:
        assert caught.value.retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "code", "tus", "error"),
    [(409, "record_exists", False, Permanent),  # a 409 that will never work
     (409, "idempotency_in_progress", False, Transient),  # a 409 that will
     (409, "upload_expired", True, UploadGone),
     (409, "upload_stored", True, AlreadyStored),
     (460, "tus_checksum_mismatch", True, Transient),  # a chunk damaged on the way
     (400, "client_disconnected", False, Transient),  # our body was cut on the way
     (404, "upload_not_found", True, UploadGone), (410, "upload_gone", True, UploadGone),
     (404, "media_not_found", False, Permanent),
     (401, "token_expired", False, TokenRefused),
     (413, "quota_exceeded", False, Permanent),
     # No code (a proxy's page, a HEAD's empty body): the status decides.
     (404, None, True, UploadGone), (410, None, True, UploadGone), (404, None, False, Permanent),
     (409, None, False, Transient), (460, None, True, Transient), (502, None, False, Transient),
     (401, None, False, TokenRefused), (400, None, False, Permanent),
     # A code this outbox does not know (a newer gateway): the status decides too.
     (409, "something_new", False, Transient), (422, "something_new", False, Permanent)],
)  # fmt: skip
def test_the_code_decides_and_the_status_only_without_a_known_code(status, code, tus, error):
    body = json.dumps({"error": {"code": code, "message": "m"}}).encode() if code else b""
    with pytest.raises(error) as caught:
        raise_for_answer(status, {}, body, what="x", tus=tus)
    assert type(caught.value) is error
    assert outcome(status, code, tus=tus) == next(o for o, e in EXCEPTION_OF.items() if e is error)


def test_a_record_with_another_sha256_is_a_hard_error_and_an_empty_one_passes(tmp_path, box):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    entry = item.files[0]
    for status in ("stored", "ready", "processing"):
        with pytest.raises(Permanent, match=f"holds SHA-256 {'0' * 64} for a.png .status {status}"):
            verify_record(entry, {"sha256": "0" * 64, "status": status})
    with pytest.raises(Permanent) as caught:
        verify_record(entry, {"sha256": "f" * 64, "status": "stored"})
    assert caught.value.code == "sha256_mismatch"
    verify_record(entry, {"sha256": entry.sha256, "status": "ready"})
    verify_record(entry, {"sha256": "", "status": "stored"})  # tus in several PATCHes
    verify_record(entry, {"status": "stored"})


def test_a_form_answer_with_another_sha256_fails_the_item(tmp_path):
    def answer(status, count):
        return json.dumps({"files": [{"mediaId": "m", "sha256": "0" * 64, "status": "stored"}]}
                          ).encode()  # fmt: skip

    stand_in = ScriptedServer((201, {}), body_for=answer)
    try:
        with Outbox(tmp_path / "o", disk_reserve=0) as box:
            item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                            project="p1", tus_threshold=MiB)  # fmt: skip
            result = Syncer(box, GatewayClient(stand_in.url, "t"), JsonLines(io.StringIO())).run()
            assert result.failed == [item.id]
            failed = box.get(item.id)
            assert failed.state == State.FAILED and "SHA-256" in failed.last_error
            assert failed.files[0].record is None  # a wrong record is not taken as the file's
    finally:
        stand_in.close()


# -- leases ----------------------------------------------------------------------------------------------
def test_a_holder_is_stale_once_its_identity_no_longer_runs():
    me = lease.current()
    assert me.running(renewed_at=0, now=1e12)
    assert me.started > 0 and me.boot_id and me.pid_ns.startswith("pid:")
    reused = reused_pid_holder()  # this PID runs, but not the process that took the lease
    assert not reused.running(renewed_at=1e12, now=1e12)
    rebooted = dataclasses.replace(me, boot_id="another-boot")  # this machine, an earlier boot
    assert not rebooted.running(renewed_at=1e12, now=1e12)
    elsewhere = dataclasses.replace(me, pid_ns="pid:[1]", pid=1)  # another container's PID 1
    assert elsewhere.running(renewed_at=1000.0, now=1000.0 + lease.LEASE_TTL - 1)
    assert not elsewhere.running(renewed_at=1000.0, now=1000.0 + lease.LEASE_TTL)
    other_machine = dataclasses.replace(me, boot_id="b", machine_id="m2")
    assert other_machine.running(renewed_at=1000.0, now=1001.0)
    assert not other_machine.running(renewed_at=1000.0, now=1000.0 + lease.LEASE_TTL)
    assert Holder.from_text(me.text()) == me


def test_an_attempt_held_by_a_reused_pid_is_waiting_and_taken_over(tmp_path):
    root = tmp_path / "o"
    with Outbox(root, disk_reserve=0) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        box._conn.execute("UPDATE items SET state = 'uploading', lease = ?",
                          (reused_pid_holder().text(),))  # fmt: skip
    with Outbox(root, disk_reserve=0) as box:
        again = box.get(item.id)
        assert (again.state, again.holder) == (State.WAITING, None)
        assert again.last_error == (f"interrupted: process {os.getpid()} on "
                                    f"{lease.current().host} stopped during an attempt")  # fmt: skip
        assert [i.id for i in box.due(box.clock())] == [item.id]
        assert box.claim(again)


@pytest.mark.parametrize("ttl", [lease.LEASE_TTL, 40.0])
def test_a_lease_from_another_container_is_respected_until_it_is_not_renewed(tmp_path, ttl):
    fake = FakeTime()
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock, lease_ttl=ttl) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        elsewhere = in_another_container()
        box._conn.execute("UPDATE items SET lease = ?, lease_renewed_at = ?",
                          (elsewhere.text(), fake.now))  # fmt: skip
        fake.now += ttl - 1
        assert box.due(fake.now) == [] and not box.claim(box.get(item.id))
        fake.now += 1
        assert [i.id for i in box.due(fake.now)] == [item.id]
        assert box.claim(box.get(item.id))


@pytest.mark.parametrize("after, taken", [(-0.5, False), (0.5, True)])
def test_a_lease_without_a_renewal_time_counts_from_the_clocks_zero(tmp_path, after, taken):
    fake = FakeTime()
    fake.now = lease.LEASE_TTL + after
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        elsewhere = in_another_container()
        box._conn.execute(
            "UPDATE items SET lease = ?, lease_renewed_at = NULL", (elsewhere.text(),)
        )
        assert box.claim(box.get(item.id)) is taken


def test_a_working_sync_renews_its_leases(tmp_path):
    fake = FakeTime()
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock, lease_ttl=40) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        box.claim(item)
        box.renew([item.id])
        assert box.get(item.id).lease_renewed_at == fake.now
        fake.now += 30
        box.renew([item.id, "not-mine"])
        assert box.get(item.id).lease_renewed_at == fake.now
        box.release(item)
        box.renew([item.id])  # no longer ours: nothing renewed
        assert box.get(item.id).lease_renewed_at is None


SCHEMA_V1 = """
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    fields TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    unreachable INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX items_due ON items (state, next_attempt_at);
CREATE TABLE files (
    item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    transport TEXT NOT NULL,
    tus_url TEXT,
    sent INTEGER NOT NULL DEFAULT 0,
    record TEXT,
    PRIMARY KEY (item_id, position)
);
CREATE TABLE steps (
    item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL,
    answer_status INTEGER,
    PRIMARY KEY (item_id, position)
);
"""  # as the outbox wrote it before leases


def test_a_version_1_outbox_is_migrated_and_its_pid_claims_dropped(tmp_path):
    root = tmp_path / "o"
    root.mkdir()
    (root / "files").mkdir()
    with sqlite3.connect(root / "outbox.db") as conn:
        conn.executescript(SCHEMA_V1 + "; PRAGMA user_version=1;")
        conn.execute(
            "INSERT INTO items (id, project, fields, idempotency_key, state, next_attempt_at,"
            " worker_pid, created_at, updated_at) VALUES ('i1', 'p1', '[]', 'k', 'uploading', 0,"
            " ?, 0, 0)",
            (os.getpid(),),
        )
        conn.execute("INSERT INTO files (item_id, position, name, path, size, sha256, transport,"
                     " tus_url, sent) VALUES ('i1', 0, 'a.mp4', 'files/i1/0-a.mp4', 9, 'h', 'tus',"
                     " 'http://g/api/tus/u', 4)")  # fmt: skip
        conn.execute("INSERT INTO steps (item_id, position, spec, answer_status) VALUES ('i1', 0,"
                     " '{\"method\": \"POST\", \"url\": \"http://x/\", \"body\": null,"
                     " \"headers\": []}', 200), ('i1', 1, '{\"method\": \"PUT\", \"url\":"
                     " \"http://y/\", \"body\": \"b\", \"headers\": [[\"X-A\", \"1\"]]}', NULL)")  # fmt: skip
    conn.close()
    with Outbox(root, disk_reserve=0) as box:
        assert box._conn.execute("PRAGMA user_version").fetchone()[0] == 3
        # (through version 2: steps after the upload, unnamed, capturing nothing)
        done, todo = box.get("i1").steps
        assert done.spec == StepSpec("POST", "http://x/", None, (), "step0", (), before=False)
        assert (done.answer_status, done.captured, done.answer) == (200, None, None)
        assert todo.spec == StepSpec("PUT", "http://y/", "b", (("X-A", "1"),), "step1")
        assert not todo.done and box.get("i1").captured == {"step0": {}}
        item = box.get("i1")
        assert (item.state, item.holder) == (State.WAITING, None)
        assert (item.files[0].tus_url, item.files[0].sent, item.files[0].generation) == (
            "http://g/api/tus/u", 4, 0)  # fmt: skip
        columns = {r[1] for r in box._conn.execute("PRAGMA table_info(items)")}
        assert "worker_pid" not in columns and {"lease", "first_sent_at"} <= columns
        assert box.claim(item)


# -- a full disk ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (a real ENOSPC), unmounted in teardown."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_disk_that_fills_during_a_copy_is_named_and_leaves_nothing(tmp_path, small_disk,
                                                                       monkeypatch):  # fmt: skip
    """(The free-space check before copying passes here as if another program filled the disk
    right after it: the check is switched off, the ENOSPC is the kernel's.)"""
    big = sample(tmp_path, "big.mp4", b"\1" * (3 * MiB))
    with Outbox(small_disk / "o", disk_reserve=0) as box:
        monkeypatch.setattr(box, "_check_space", lambda needed: None)
        with pytest.raises(NoSpaceLeft, match=r"the disk holding .*/small/o is full") as caught:
            box.push([Incoming(big, "big.mp4")], project="p1", tus_threshold=MiB)
        assert caught.value.exit_status == 5
        assert box._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
        assert list(box.files_dir.iterdir()) == []
        small = sample(tmp_path, "a.png", png_bytes(10_000))
        assert box.push([Incoming(small, "a.png")], project="p1", tus_threshold=MiB).files


def test_a_full_disk_under_the_database_is_not_called_damage(tmp_path, small_disk, monkeypatch):
    root = small_disk / "o"
    with Outbox(root, disk_reserve=0) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        filler = fill(small_disk)
        monkeypatch.setattr(box, "_check_space", lambda needed: None)
        note = sample(tmp_path, "n.png", b"")
        with pytest.raises(NoSpaceLeft) as caught:  # new pages for a 200 kB field: SQLITE_FULL
            box.push([Incoming(note, "n.png")], project="p1", tus_threshold=MiB,
                     fields=[("note", "x" * 200_000)])  # fmt: skip
        assert "database or disk is full" in str(caught.value)
        assert not isinstance(caught.value, OutboxDamaged)
    done = outbox_cli(root, "push", str(sample(tmp_path, "b.png", png_bytes())), "-p", "p1")
    assert done.returncode == 5, done.stderr
    assert "free on its disk" in done.stderr and "damaged" not in done.stderr
    filler.unlink()
    with Outbox(root, disk_reserve=0) as box:
        assert box._conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert [(i.id, i.state) for i in box.items()] == [(item.id, State.QUEUED)]


# -- offline: at once -------------------------------------------------------------------------------------
def test_an_offline_sync_exits_75_after_one_attempt_and_no_retry_loop(tmp_path):
    env = {"OUTBOX_GATEWAY": f"http://127.0.0.1:{free_port()}", "OUTBOX_TOKEN": "t"}
    ids = []
    for n in range(3):
        pushed = outbox_cli(tmp_path / "o", "push", str(sample(tmp_path, f"{n}.png", png_bytes())),
                            "-p", "p1", "--json", env=env)  # fmt: skip
        ids.append(json.loads(pushed.stdout)["id"])
    done = outbox_cli(tmp_path / "o", "sync", "--json", "-j", "1", env=env)
    assert done.returncode == 75, done.stderr
    kinds = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    assert kinds == ["started", "retry", "offline"]  # one attempt; no wait, no second round
    assert "cannot be reached" in done.stderr
    listed = {i["id"]: i for i in json.loads(outbox_cli(tmp_path / "o", "queue", "--json").stdout)}
    assert (listed[ids[0]]["state"], listed[ids[0]]["attempts"]) == ("waiting", 1)
    assert "ConnectionError" in listed[ids[0]]["lastError"]
    assert [(listed[i]["state"], listed[i]["attempts"]) for i in ids[1:]] == [("queued", 0)] * 2
    text = outbox_cli(tmp_path / "o", "queue", env=env).stdout
    assert re.search(r"  waiting, (retrying at \d\d:\d\d:\d\d|due now) ", text.splitlines()[0])

    # The control: with --max-wait the sync goes on past the first unreachable attempt.
    waited = outbox_cli(tmp_path / "o", "sync", "--json", "-j", "1", "--max-wait", "0", env=env)
    assert waited.returncode == 75
    kinds = [json.loads(line)["event"] for line in waited.stdout.splitlines()]
    assert "offline" not in kinds and kinds.count("retry") >= 2
    listed = json.loads(outbox_cli(tmp_path / "o", "queue", "--json").stdout)
    assert {i["state"] for i in listed} == {"waiting"}


def test_the_queue_says_what_is_happening(tmp_path, box):
    from outbox.cli import _state_text

    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                    project="p1", tus_threshold=MiB)  # fmt: skip
    assert _state_text(item, box.clock()) == "queued"
    box.claim(item)
    assert _state_text(box.get(item.id), box.clock()) == f"uploading (pid {os.getpid()})"
    box.schedule_retry(item, delay=90, error="503", unreachable=False)
    box.release(item)
    waiting = box.get(item.id)
    at = time.strftime("%H:%M:%S", time.localtime(waiting.next_attempt_at))
    assert _state_text(waiting, waiting.next_attempt_at - 1) == f"waiting, retrying at {at}"
    assert _state_text(waiting, waiting.next_attempt_at) == "waiting, due now"


# -- Ctrl-C twice -------------------------------------------------------------------------------------
class SilentGateway:
    """Accepts connections, reads what comes, never answers: a request to it never ends."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_a_second_ctrl_c_quits_at_once_and_the_item_is_resumed_later(tmp_path):
    """The first Ctrl-C waits for the request in flight (here one that never ends: only the
    socket timeout, 60 s, would end it); the second quits now."""
    silent = SilentGateway()
    env = {**os.environ, "OUTBOX_DIR": str(tmp_path / "o"), "OUTBOX_GATEWAY": silent.url,
           "OUTBOX_TOKEN": "t"}  # fmt: skip
    proc = None
    try:
        pushed = outbox_cli(tmp_path / "o", "push", str(sample(tmp_path, "a.png", png_bytes())),
                            "-p", "p1", "--json")  # fmt: skip
        item = json.loads(pushed.stdout)["id"]
        proc = subprocess.Popen([sys.executable, "-m", "outbox", "sync", "--json"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert silent.accepted.wait(30)  # the upload's request is in flight
        proc.send_signal(signal.SIGINT)
        assert "stopping at the next chunk boundary" in proc.stderr.readline()
        assert proc.poll() is None  # still waiting for the request in flight
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        silent.close()
    status = json.loads(outbox_cli(tmp_path / "o", "status", item, "--json").stdout)
    assert status["state"] == "waiting" and status["attempts"] == 0
    # the second Ctrl-C quits at once; whether the first one's stop was recorded before it
    # depends on the timing: either way the attempt is reported as interrupted
    assert status["lastError"] in ("interrupted: stopped while sending the form",) or status[
        "lastError"
    ].startswith(f"interrupted: process {proc.pid} on ")


@pytest.mark.parametrize("reserve, refused", [(9000, False), (9001, True)])
def test_the_disk_reserve_is_exact(tmp_path, monkeypatch, reserve, refused):
    path = sample(tmp_path, "a.png", png_bytes(1000))
    size = path.stat().st_size

    with Outbox(tmp_path / "o", disk_reserve=reserve) as box:
        monkeypatch.setattr(shutil, "disk_usage", lambda _: types.SimpleNamespace(free=9000 + size))
        if not refused:  # what stays free is the reserve, exactly
            box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
            return
        message = (f"^copying {size} bytes into the outbox would leave less than 9001 bytes free "
                   f"on its disk \\({9000 + size} free now\\)$")  # fmt: skip
        with pytest.raises(DiskFull, match=message):
            box.push([Incoming(path, "a.png")], project="p1", tus_threshold=MiB)
        assert box.items() == []


def test_an_unknown_item_is_named_in_the_error(box):
    from outbox.errors import NoSuchItem

    with pytest.raises(NoSuchItem, match=r"^no item f00d in the outbox$"):
        box.get("f00d")


@pytest.mark.parametrize(
    "name, stored",
    [("../é x.png", "0-x.png"), ("X b.png", "0-X_b.png"), ("...", "0-file"), ("", "0-file"),
     ("a" * 100 + ".png", "0-" + ("a" * 100 + ".png")[-80:])],
)  # fmt: skip
def test_a_files_copy_is_named_safely_after_it(tmp_path, box, name, stored):
    item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), name)], project="p1",
                    tus_threshold=MiB)  # fmt: skip
    assert item.files[0].name == name
    assert (box.root / item.files[0].path).name == stored


class _Slowly(io.RawIOBase):
    """A file whose every read takes ``seconds`` on the outbox's clock."""

    def __init__(self, raw, clock, seconds: float) -> None:
        self.raw, self.clock, self.seconds = raw, clock, seconds

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.clock.now += self.seconds
        return self.raw.read(size)

    def close(self) -> None:
        self.raw.close()
        super().close()


class SlowPath(type(Path())):  # type: ignore[misc]
    clock: FakeTime
    seconds = 15.0

    def open(self, mode="r", *args, **kwargs):  # type: ignore[override]
        raw = super().open(mode, *args, **kwargs)
        return _Slowly(raw, self.clock, self.seconds) if "r" in mode else raw


def test_a_long_copy_renews_its_push_lease_each_quarter_of_its_life(tmp_path, monkeypatch):
    """Each 1,000-byte block takes 15 s: renewed once more than 30 s (a quarter of 120) passed."""
    from outbox import store

    monkeypatch.setattr(store, "COPY_BLOCK", 1000)
    fake = FakeTime()
    start = fake.now
    data = bytes(range(256)) * 24  # 6,144 bytes: 7 reads and the empty one
    path = SlowPath(sample(tmp_path, "a.bin", data))
    path.clock = fake
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock, lease_ttl=120.0) as box:
        renewals: list[float] = []
        renew = box.renew
        box.renew = lambda ids: renewals.append(fake.now - start) or renew(ids)  # type: ignore[method-assign]
        item = box.push([Incoming(path, "a.bin")], project="p1", tus_threshold=MiB)
        assert renewals == [45.0, 90.0]
        stored = box.get(item.id)
        assert (stored.files[0].size, stored.files[0].sha256) == (
            len(data), hashlib.sha256(data).hexdigest())  # fmt: skip
        assert (stored.state, stored.holder, stored.lease_renewed_at) == (State.QUEUED, None, None)


def test_a_push_that_cannot_make_its_directory_raises_that_and_leaves_nothing(
    tmp_path, box, monkeypatch
):
    import uuid

    fixed = uuid.UUID(int=7)
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)
    (box.files_dir / fixed.hex).write_bytes(b"in the way")  # a file where the directory goes
    with pytest.raises(FileExistsError):
        box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")], project="p1",
                 tus_threshold=MiB)  # fmt: skip
    assert box.items() == []


@pytest.mark.parametrize(
    "cleanup_error",
    [OutboxLocked("o.db"), OutboxDamaged("o.db", "malformed"), NoSpaceLeft("o", "full")],
)
def test_a_failed_push_raises_its_own_error_even_when_its_row_cannot_be_deleted(
    tmp_path, box, monkeypatch, cleanup_error
):
    import contextlib

    from outbox import store

    def broken_copy(source, target, on_block):
        raise OSError(errno.EIO, "read error")

    monkeypatch.setattr(store, "_copy_and_hash", broken_copy)
    write = box._write
    calls = [0]

    @contextlib.contextmanager
    def write_then_fail():
        calls[0] += 1
        if calls[0] > 1:  # the insert went through; the cleanup's delete cannot
            raise cleanup_error
        with write() as conn:
            yield conn

    monkeypatch.setattr(box, "_write", write_then_fail)
    with pytest.raises(OSError, match="read error"):
        box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")], project="p1",
                 tus_threshold=MiB)  # fmt: skip
    assert calls[0] == 2


def test_the_lock_timeout_is_sqlites_busy_timeout_in_milliseconds(tmp_path):
    with Outbox(tmp_path / "o", disk_reserve=0, lock_timeout=2.5) as box:
        assert box._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500


def test_a_damaged_database_names_itself_and_what_the_check_found(tmp_path):
    root = tmp_path / "o"
    with Outbox(root, disk_reserve=0) as box:
        for _ in range(30):
            box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")], project="p1",
                     tus_threshold=MiB)  # fmt: skip
        box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = root / "outbox.db"
    data = bytearray(db.read_bytes())
    data[4096 : 4096 + 8] = b"\x0d\xff\xff\xff\xff\xff\xff\xff"  # page 2's b-tree header
    db.write_bytes(bytes(data))
    with pytest.raises(OutboxDamaged) as caught:
        Outbox(root)
    found = re.fullmatch(
        rf"the outbox database {re.escape(str(db))} is damaged \((.+)\); nothing was changed: "
        r"the queued files are still in its files/ directory\. Move the database aside to start "
        r"a new one\.",
        str(caught.value),
        re.DOTALL,
    )
    assert found is not None, str(caught.value)
    assert found.group(1) not in ("ok", "None")


def test_an_unknown_schema_version_is_damage_named_with_its_version(tmp_path):
    root = tmp_path / "o"
    with Outbox(root, disk_reserve=0) as box:
        box._conn.execute("PRAGMA user_version=99")
    with pytest.raises(OutboxDamaged) as caught:
        Outbox(root)
    assert str(caught.value).startswith(
        f"the outbox database {root / 'outbox.db'} is damaged (unknown schema version 99); "
    )


def test_a_push_in_progress_in_another_container_is_kept_while_its_lease_is_renewed(tmp_path):
    root = tmp_path / "o"
    Outbox(root, disk_reserve=0).close()
    elsewhere = in_another_container()
    insert_raw_item(root, "pushing", "queuing", elsewhere, renewed=time.time())
    insert_raw_item(root, "abandoned", "queuing", elsewhere, renewed=time.time() - 3600)
    with Outbox(root, disk_reserve=0) as box:
        ids = {row[0] for row in box._conn.execute("SELECT id FROM items")}
    assert ids == {"pushing"}
    assert (root / "files" / "pushing").exists() and not (root / "files" / "abandoned").exists()


def test_a_push_killed_before_its_directory_was_made_is_forgotten_on_open(tmp_path):
    root = tmp_path / "o"
    Outbox(root, disk_reserve=0).close()
    insert_raw_item(root, "early", "queuing", dead_holder())
    shutil.rmtree(root / "files" / "early")  # killed between its row and its directory
    with Outbox(root, disk_reserve=0) as box:
        assert box._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0


def test_an_attempt_without_a_lease_is_recovered_as_by_a_process_unknown(tmp_path):
    root = tmp_path / "o"
    Outbox(root, disk_reserve=0).close()
    insert_raw_item(root, "orphan", "uploading", None)
    fake = FakeTime()
    with Outbox(root, disk_reserve=0, clock=fake.clock) as box:
        item = box.get("orphan")
        assert (item.state, item.holder, item.updated_at) == (State.WAITING, None, fake.now)
        assert item.last_error == "interrupted: a process stopped during an attempt"


def test_an_item_read_back_has_its_holder_and_its_last_change(tmp_path):
    fake = FakeTime()
    with Outbox(tmp_path / "o", disk_reserve=0, clock=fake.clock) as box:
        item = box.push([Incoming(sample(tmp_path, "a.png", png_bytes()), "a.png")],
                        project="p1", tus_threshold=MiB)  # fmt: skip
        assert box.get(item.id).updated_at == fake.now
        fake.now += 10
        elsewhere = in_another_container()
        box._conn.execute("UPDATE items SET lease = ?, lease_renewed_at = NULL, updated_at = ?",
                          (elsewhere.text(), fake.now))  # fmt: skip
        read = box.get(item.id)
        assert (read.holder, read.lease_renewed_at, read.updated_at) == (elsewhere, None, fake.now)
