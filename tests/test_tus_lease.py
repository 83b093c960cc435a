"""No acknowledged byte is ever lost to a tus request that lost its lease.

The interleavings are scripted with events, not sleeps: request A stands still (its body stops,
or its part write is held) while the leases' clock moves past A's lease, request B takes the
upload at the same offset and is acknowledged, then A goes on. On local storage and on S3."""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import UTC, datetime, timedelta

import media_samples as samples
import pytest
from test_tus import V, create, error, head, patch, path_of, stored_bytes

from gateway import create_app
from gateway.media.lifecycle import Status

from conftest import init_stores, make_settings
from support import MiB, leftovers

PART = 5 * MiB
LEASE = 60


@pytest.fixture(params=["local", "s3"])
def stack(request, tmp_path):
    moto = request.getfixturevalue("moto_url") if request.param != "local" else None
    app = create_app(
        make_settings(tmp_path, backend=request.param, moto_url=moto, direct_part_size=PART)
    )
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    from gateway.http.auth import mint_token

    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app.test_client(), svc, auth


def file_of(size: int) -> bytes:
    head_bytes = samples.photo(320, 240)
    return head_bytes + bytes(i % 251 for i in range(size - len(head_bytes)))


class Stalling(io.BytesIO):
    """A body that hands out ``before`` bytes, then waits for ``go``, then the rest."""

    def __init__(self, data: bytes, before: int) -> None:
        super().__init__(data)
        self.before = before
        self.waiting, self.go = threading.Event(), threading.Event()

    def readinto(self, buffer) -> int:
        position = self.tell()
        if position == self.before and not self.go.is_set():
            self.waiting.set()
            assert self.go.wait(60)
        limit = self.before - position if position < self.before else len(buffer)
        chunk = self.read(min(len(buffer), limit))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def patch_in_thread(client, auth, location, offset, body, length):
    answers = []

    def run():
        answers.append(
            client.patch(
                location,
                input_stream=body,
                headers={
                    **V,
                    **auth,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(length),
                },
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def leases_clock_jumps(svc, seconds: float) -> None:
    """The leases' clock moves on: every lease taken before now ran out (A stood still)."""
    later = datetime.now(UTC) + timedelta(seconds=seconds)
    svc.tus.clock = lambda: later


def test_a_request_whose_lease_ran_out_while_its_client_paused_writes_nothing(stack):
    """The review's interleaving: A stalls mid-body past its lease, B takes the upload at the
    same offset and finishes it (204); A resumes with other bytes and is refused (423) before
    it writes a part: the stored file is B's bytes, with B's SHA-256."""
    client, svc, auth = stack
    data = file_of(2 * PART + 1000)
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[:PART]).status_code == 204
    not_b = bytes(len(data) - PART)  # what A sends: other bytes, same offset
    a_body = Stalling(not_b, before=PART - 10)  # most of a part, then A stands still
    a_thread, a_answer = patch_in_thread(client, auth, location, PART, a_body, len(not_b))
    assert a_body.waiting.wait(60)
    leases_clock_jumps(svc, LEASE + 1)
    b = patch(client, auth, location, PART, data[PART:])
    assert b.status_code == 204 and b.headers["Upload-Offset"] == str(len(data))
    a_body.go.set()
    a_thread.join(60)
    assert (a_answer[0].status_code, error(a_answer[0])) == (423, "upload_locked")
    assert stored_bytes(svc, location) == data
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status is Status.STORED and record.sha256 == hashlib.sha256(data).hexdigest()
    left = leftovers(svc)
    assert left["objects"] == [svc.store.full_key(record.s3_key)]
    assert left["pending_uploads"] == [] and left["records"] == [record.media_id]


def test_a_part_write_under_way_when_the_lease_ran_out_never_replaces_the_next_holders(stack):
    """A passed its lease check and stands still inside its part write; B takes the upload at
    the same offset and its part is acknowledged; then A's write lands (in A's own part number)
    and A is refused. C finishes the upload: the stored file is exactly the acknowledged bytes."""
    client, svc, auth = stack
    data = file_of(3 * PART + 1000)
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[:PART]).status_code == 204
    a_bytes = b"A" * PART
    writing, go = threading.Event(), threading.Event()
    upload_part = svc.tus.uploads.chunks.upload_part

    def held_for_a(key, upload_id, number, part):
        if part[:1] == b"A":
            writing.set()
            assert go.wait(60)
        return upload_part(key, upload_id, number, part)

    svc.tus.uploads.chunks.upload_part = held_for_a
    a_thread, a_answer = patch_in_thread(
        client, auth, location, PART, io.BytesIO(a_bytes), len(a_bytes)
    )
    assert writing.wait(60)
    leases_clock_jumps(svc, LEASE + 1)
    b = patch(client, auth, location, PART, data[PART : 2 * PART])
    assert b.status_code == 204 and b.headers["Upload-Offset"] == str(2 * PART)
    go.set()
    a_thread.join(60)
    assert (a_answer[0].status_code, error(a_answer[0])) == (423, "upload_locked")
    assert head(client, auth, location).headers["Upload-Offset"] == str(2 * PART)
    c = patch(client, auth, location, 2 * PART, data[2 * PART :])
    assert c.status_code == 204, c.get_json()
    assert stored_bytes(svc, location) == data
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert leftovers(svc)["pending_uploads"] == []


@pytest.mark.slow
def test_a_slow_client_keeps_its_lease_past_its_length(tmp_path):
    """The lease is renewed on a timer, not between reads: a body whose next bytes take longer
    than the lease (3 s here) to come is not taken over; a second request meanwhile is 423,
    and the upload is stored."""
    app = create_app(make_settings(tmp_path, tus_lock_seconds=3))
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    from gateway.http.auth import mint_token

    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    client = app.test_client()
    data = file_of(60_000)
    location = path_of(create(client, auth, len(data)))
    body = Stalling(data, before=10_000)
    thread, answer = patch_in_thread(client, auth, location, 0, body, len(data))
    assert body.waiting.wait(60)
    threading.Event().wait(4.5)  # real time past the lease's length: only a timer renews it
    second = patch(client, auth, location, 0, data)
    assert (second.status_code, error(second)) == (423, "upload_locked")
    body.go.set()
    thread.join(60)
    assert answer[0].status_code == 204
    assert stored_bytes(svc, location) == data
