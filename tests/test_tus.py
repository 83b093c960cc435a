"""tus 1.0 through the Flask test client, on every backend: the protocol's headers and codes,
the gateway's rules, and after every refusal: the offset and the bytes unchanged, nothing left."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools

import media_samples as samples
import pytest

from gateway.media.lifecycle import Status

from conftest import also_on_ceph
from support import MiB, assert_nothing_left, leftovers, read_object

ON_CEPH = also_on_ceph("local", "s3", "s3+dynamodb")  # what the store does: on Ceph as well

V = {"Tus-Resumable": "1.0.0"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(client, auth, length=None, *, project="p1", headers=None, data=None, **more):
    h = {**V, **auth, "Upload-Metadata": meta(projectId=project, filename="a.jpg", **more)}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if data is not None:
        h["Content-Type"] = "application/offset+octet-stream"
    h.update(headers or {})
    return client.post("/api/tus/", headers=h, data=data)


def patch(client, auth, location, offset, data, headers=None):
    return client.patch(
        location,
        data=data,
        headers={
            **V,
            **auth,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            **(headers or {}),
        },
    )


def head(client, auth, location):
    return client.head(location, headers={**V, **auth})


def path_of(response) -> str:
    return response.headers["Location"].split("://", 1)[1].split("/", 1)[1].join(["/", ""])


def error(response) -> str:
    return response.get_json()["error"]["code"]


def upload_in_chunks(client, auth, data, chunk, **kw):
    created = create(client, auth, len(data), **kw)
    assert created.status_code == 201, created.get_json()
    location = path_of(created)
    offset = 0
    while offset < len(data):
        answer = patch(client, auth, location, offset, data[offset : offset + chunk])
        assert answer.status_code == 204, answer.get_json()
        offset = int(answer.headers["Upload-Offset"])
    return location


def stored_bytes(svc, location) -> bytes:
    record = svc.records.get(location.rsplit("/", 1)[1])
    return read_object(svc.store, record.s3_key)


def test_options_advertises_the_protocol(client):
    answer = client.options("/api/tus/")
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"].split(",") == [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    ]
    assert answer.headers["Tus-Checksum-Algorithm"] == "md5,sha1,sha256"
    assert int(answer.headers["Tus-Max-Size"]) == 5 * 1024 * MiB


@ON_CEPH
def test_an_upload_in_chunks_spanning_parts_is_stored_exactly(client, auth, svc):
    data = samples.photo(1600, 1200) + bytes(range(256)) * (80 * 1024)  # ~21 MiB: 3 parts of 8
    location = upload_in_chunks(client, auth, data, 3 * MiB + 17)
    assert stored_bytes(svc, location) == data
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status is Status.STORED and record.size == len(data)
    assert record.mime_type == "image/jpeg" and record.s3_key.endswith(".jpg")
    assert record.sha256 == hashlib.sha256(data).hexdigest()  # hashed across the requests
    assert record.upload.hash_state == ""  # done: no state kept
    state = head(client, auth, location)
    assert state.status_code == 200 and state.headers["Upload-Offset"] == str(len(data))
    assert state.headers["Upload-Length"] == str(len(data))
    assert leftovers(svc)["pending_uploads"] == []


def test_a_recording_sent_in_small_chunks_is_typed_once_its_first_bytes_are_in(client, auth, svc):
    """As a browser's MediaRecorder sends it: an audio-only WebM, a few KiB a request."""
    data = samples.audio("webm", 2.0)
    location = upload_in_chunks(client, auth, data, 3000)
    assert stored_bytes(svc, location) == data
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert (record.mime_type, record.file_type) == ("audio/webm", "audio")
    assert record.status is Status.STORED and record.s3_key.endswith(".webm")


@ON_CEPH
def test_an_upload_in_one_request_gets_its_sha256(client, auth, svc):
    data = samples.png(300, 200)
    created = create(client, auth, len(data), data=data)
    assert created.status_code == 201 and created.headers["Upload-Offset"] == str(len(data))
    record = svc.records.get(path_of(created).rsplit("/", 1)[1])
    assert record.status is Status.STORED and record.sha256 == hashlib.sha256(data).hexdigest()
    media = client.get(f"/api/media/{record.media_id}", headers=auth).get_json()
    assert media["status"] == "stored" and media["contentType"] == "image/png"


def test_head_reports_progress_and_metadata(client, auth, svc):
    data = samples.photo(1600, 1200)
    created = create(client, auth, len(data), caption="a cat")
    location = path_of(created)
    assert created.headers["Upload-Expires"].endswith("GMT")
    patched = patch(client, auth, location, 0, data[:1000])
    assert patched.status_code == 204
    state = head(client, auth, location)
    for empty in (created, patched, state):  # empty answers carry no Content-Type
        assert "Content-Type" not in empty.headers
    assert state.headers["Upload-Offset"] == "1000" and state.headers["Cache-Control"] == "no-store"
    assert "projectId cDE=" in state.headers["Upload-Metadata"]
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status is Status.PENDING and record.metadata == {"caption": "a cat"}


@ON_CEPH
def test_a_deferred_length_is_given_later(client, auth, svc):
    data = samples.photo(1600, 1200)
    created = create(client, auth, None)
    location = path_of(created)
    assert head(client, auth, location).headers["Upload-Defer-Length"] == "1"
    assert patch(client, auth, location, 0, data[:5000]).status_code == 204
    done = patch(
        client, auth, location, 5000, data[5000:], headers={"Upload-Length": str(len(data))}
    )
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(len(data))
    assert stored_bytes(svc, location) == data


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_checksums_are_verified_before_the_chunk_counts(client, auth, svc, algorithm):
    data = samples.photo(1600, 1200)
    location = path_of(create(client, auth, len(data)))
    chunk = data[:4000]
    digest = base64.b64encode(getattr(hashlib, algorithm)(chunk).digest()).decode()
    wrong = patch(
        client,
        auth,
        location,
        0,
        chunk,
        headers={"Upload-Checksum": f"{algorithm} {digest[:-4]}AAA="},
    )
    assert wrong.status_code == 460 and error(wrong) == "tus_checksum_mismatch"
    assert head(client, auth, location).headers["Upload-Offset"] == "0"
    right = patch(
        client, auth, location, 0, chunk, headers={"Upload-Checksum": f"{algorithm} {digest}"}
    )
    assert right.status_code == 204 and right.headers["Upload-Offset"] == "4000"
    assert patch(client, auth, location, 4000, data[4000:]).status_code == 204
    assert stored_bytes(svc, location) == data


def test_an_unknown_checksum_algorithm_is_400(client, auth):
    location = path_of(create(client, auth, 100))
    answer = patch(client, auth, location, 0, b"x" * 10, headers={"Upload-Checksum": "crc32 AAAA"})
    assert answer.status_code == 400 and error(answer) == "unsupported_checksum"


@ON_CEPH
def test_a_wrong_offset_is_409_and_changes_nothing(client, auth, svc):
    data = samples.photo(1600, 1200)
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[:3000]).status_code == 204
    for offset in (0, 2999, 3001):
        answer = patch(client, auth, location, offset, data[offset : offset + 100])
        assert answer.status_code == 409 and error(answer) == "upload_offset_mismatch"
    assert head(client, auth, location).headers["Upload-Offset"] == "3000"
    assert patch(client, auth, location, 3000, data[3000:]).status_code == 204
    assert stored_bytes(svc, location) == data


def test_a_chunk_past_the_length_is_refused(client, auth):
    location = path_of(create(client, auth, 10_000))
    answer = patch(client, auth, location, 0, samples.photo(1600, 1200))
    assert answer.status_code == 413 and error(answer) == "too_large"
    assert head(client, auth, location).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({"Tus-Resumable": "0.2.2"}, 412, "tus_version_unsupported"),
        ({"Upload-Length": "x"}, 400, "invalid_tus_header"),
        ({"Upload-Length": str(5 * 1024 * MiB + 1)}, 413, "too_large"),
        ({"Upload-Length": "0"}, 422, "empty_file"),
        ({"Upload-Metadata": "filename ???"}, 400, "invalid_tus_header"),
        ({"Upload-Metadata": meta(filename="a")}, 400, "missing_project_id"),
        ({"Upload-Metadata": meta(projectId="p1\n")}, 400, "invalid_project_id"),
        ({"Upload-Metadata": meta(projectId="other")}, 403, "project_forbidden"),
        ({"Upload-Concat": "sideways"}, 400, "invalid_tus_header"),
    ],
)
def test_creation_refusals_create_nothing(client, token, svc, headers, status, code):
    auth = {"Authorization": f"Bearer {token('alice', projects=['p1'])}"}
    answer = create(client, auth, 100, headers=headers)
    assert answer.status_code == status, answer.get_json()
    assert error(answer) == code and answer.headers["Tus-Resumable"] == "1.0.0"
    assert_nothing_left(svc)


def test_no_token_is_401_before_anything(client, svc):
    answer = client.post(
        "/api/tus/", headers={**V, "Upload-Length": "10", "Upload-Metadata": meta(projectId="p1")}
    )
    assert answer.status_code == 401 and error(answer) == "missing_token"
    assert_nothing_left(svc)


@ON_CEPH
def test_a_disallowed_type_ends_the_upload_and_leaves_nothing(client, auth, svc):
    data = b"MZ" + b"\0" * 20_000
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[:4000]).status_code == 204  # not sniffable yet
    answer = patch(client, auth, location, 4000, data[4000:])
    assert answer.status_code == 415 and error(answer) == "unsupported_type"
    assert head(client, auth, location).status_code == 404
    assert_nothing_left(svc)


@ON_CEPH
def test_termination_removes_everything(client, auth, svc):
    data = samples.photo(1600, 1200) + b"\0" * (9 * MiB)
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[: 8 * MiB + 10]).status_code == 204
    left = leftovers(svc)
    assert left["pending_uploads"] or left["objects"]  # a part and a chunk exist
    deleted = client.delete(location, headers={**V, **auth})
    assert deleted.status_code == 204
    assert head(client, auth, location).status_code == 404
    assert patch(client, auth, location, 8 * MiB + 10, b"x").status_code == 404
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status is Status.ABORTED
    assert leftovers(svc)["objects"] == [] and leftovers(svc)["pending_uploads"] == []


def test_method_override_reaches_patch_and_delete(client, auth, svc):
    data = samples.png()
    location = path_of(create(client, auth, len(data)))
    answer = client.post(
        location,
        data=data,
        headers={
            **V,
            **auth,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert answer.status_code == 204 and answer.headers["Upload-Offset"] == str(len(data))


def test_an_expired_upload_is_gone(client, auth, svc):
    from datetime import timedelta

    location = path_of(create(client, auth, 10_000))
    assert patch(client, auth, location, 0, samples.photo(1600, 1200)[:3000]).status_code == 204
    real = svc.tus.clock
    svc.tus.clock = lambda: real() + timedelta(days=2)
    answer = head(client, auth, location)
    assert answer.status_code == 410
    assert patch(client, auth, location, 3000, b"x").status_code == 410
    svc.tus.clock = real
    assert svc.records.get(location.rsplit("/", 1)[1]).status is Status.EXPIRED
    assert leftovers(svc)["objects"] == [] and leftovers(svc)["pending_uploads"] == []


def test_the_sweeper_expires_overdue_uploads(client, auth, svc):
    from datetime import UTC, datetime, timedelta

    location = path_of(create(client, auth, 10_000))
    assert patch(client, auth, location, 0, samples.photo(1600, 1200)[:3000]).status_code == 204
    report = svc.sweeper.sweep(
        older_than=timedelta(hours=1), now=datetime.now(UTC) + timedelta(days=2)
    )
    media_id = location.rsplit("/", 1)[1]
    assert f"expire tus upload {media_id}" in report.done and report.failed == []
    assert svc.records.get(media_id).status is Status.EXPIRED
    assert leftovers(svc)["objects"] == []


@ON_CEPH
def test_the_sweeper_keeps_a_live_uploads_chunks_and_removes_strays_once_it_ends(client, auth, svc):
    """A node killed mid-PATCH leaves a chunk object and parts (or a multipart upload) no record
    names: kept while the upload goes on, swept once it has ended."""
    from datetime import UTC, datetime, timedelta

    from gateway.storage.chunks import chunk_key

    data = samples.photo(1600, 1200) + bytes(7 * MiB)
    location = path_of(create(client, auth, len(data)))
    media_id = location.rsplit("/", 1)[1]
    assert patch(client, auth, location, 0, data[: 6 * MiB]).status_code == 204
    chunks, target = svc.tus.uploads.chunks, svc.records.get(media_id).s3_key
    chunks.put(chunk_key(media_id, "pending-99"), b"stray")
    stray = chunks.start(target, content_type="image/jpeg", metadata={}, content_disposition="")
    chunks.upload_part(target, stray, 2, bytes(1000))
    whole = chunk_key(media_id, "whole")  # where a partial upload assembles its bytes
    in_chunk_area = chunks.start(whole, content_type="", metadata={}, content_disposition="")
    chunks.upload_part(whole, in_chunk_area, 1, bytes(1000))
    before = leftovers(svc)

    def sweep():
        return svc.sweeper.sweep(
            older_than=timedelta(hours=1), now=datetime.now(UTC) + timedelta(hours=2)
        )

    report = sweep()
    assert (report.done, report.failed) == ([], [])
    assert leftovers(svc) == before
    assert patch(client, auth, location, 6 * MiB, data[6 * MiB :]).status_code == 204
    report = sweep()
    assert report.failed == []
    assert f"delete unrecorded object {chunk_key(media_id, 'pending-99')}" in report.done
    assert leftovers(svc) == {
        "objects": [svc.store.full_key(target)],
        "pending_uploads": [],
        "records": [media_id],
    }
    assert stored_bytes(svc, location) == data


def test_someone_elses_upload_is_404(client, auth, token):
    location = path_of(create(client, auth, 100))
    bob = {"Authorization": f"Bearer {token('bob')}"}
    for answer in (
        head(client, bob, location),
        patch(client, bob, location, 0, b"x"),
        client.delete(location, headers={**V, **bob}),
    ):
        assert answer.status_code == 404 and answer.headers["Tus-Resumable"] == "1.0.0"


def test_a_patch_while_another_holds_the_upload_is_423(client, auth, svc):
    import dataclasses
    import time

    location = path_of(create(client, auth, 10_000))
    record = svc.records.get(location.rsplit("/", 1)[1])
    held = svc.records.update(
        record.evolve(
            upload=dataclasses.replace(
                record.upload, lock_token="other", lock_until=time.time() + 60
            )
        ),
        expected=record,
    )
    answer = patch(client, auth, location, 0, b"x" * 10)
    assert answer.status_code == 423 and error(answer) == "upload_locked"
    svc.records.update(
        held.evolve(upload=dataclasses.replace(held.upload, lock_until=time.time() - 1)),
        expected=held,
    )  # the lease ran out
    assert patch(client, auth, location, 0, samples.photo(1600, 1200)[:500]).status_code == 204


@ON_CEPH
def test_concatenation_of_partial_uploads(client, auth, svc):
    data = samples.photo(600, 400) + bytes(range(256)) * 4000
    pieces = [data[:5000], data[5000:700_000], data[700_000:]]
    partials = []
    for piece in pieces:
        created = create(client, auth, len(piece), headers={"Upload-Concat": "partial"}, data=piece)
        assert created.status_code == 201 and created.headers["Upload-Concat"] == "partial"
        partials.append(created.headers["Location"])
    assert leftovers(svc)["records"] != [] and all(
        svc.records.get(p.rsplit("/", 1)[1]).status is Status.PENDING for p in partials
    )
    final = client.post(
        "/api/tus/",
        headers={
            **V,
            **auth,
            "Upload-Metadata": meta(projectId="p1", filename="whole.jpg"),
            "Upload-Concat": "final;" + " ".join(partials),
        },
    )
    assert final.status_code == 201, final.get_json()
    assert final.headers["Upload-Offset"] == str(len(data))
    assert final.headers["Upload-Concat"].startswith("final;")
    assert stored_bytes(svc, path_of(final)) == data
    record = svc.records.get(path_of(final).rsplit("/", 1)[1])
    assert record.status is Status.STORED
    assert leftovers(svc)["records"] == [record.media_id]
    left = leftovers(svc)
    assert left["objects"] == [svc.store.full_key(record.s3_key)]
    assert patch(client, auth, path_of(final), len(data), b"x").status_code == 403


@ON_CEPH
def test_a_client_gone_mid_chunk_keeps_what_arrived(client, auth, svc):
    """No checksum: what arrived before the connection dropped counts, and the client resumes
    from the offset HEAD reports."""
    data = samples.photo(1600, 1200)
    location = path_of(create(client, auth, len(data)))

    class Dropping(io.BytesIO):
        """Hands out 2,000 bytes a read; the connection resets after 4,000."""

        def readinto(self, buffer):
            if self.tell() >= 4000:
                raise OSError("connection reset")
            chunk = self.read(min(len(buffer), 2000))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    answer = client.patch(
        location,
        input_stream=Dropping(data),
        headers={
            **V,
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(len(data)),
        },
    )
    assert answer.status_code == 400 and error(answer) == "client_disconnected"
    offset = int(head(client, auth, location).headers["Upload-Offset"])
    assert offset == 4000
    assert patch(client, auth, location, offset, data[offset:]).status_code == 204
    assert stored_bytes(svc, location) == data


def test_the_media_route_shows_a_tus_upload_in_progress_to_its_owner(client, auth, token):
    data = samples.photo(1600, 1200)
    location = path_of(create(client, auth, len(data)))
    assert patch(client, auth, location, 0, data[:5000]).status_code == 204
    media_id = location.rsplit("/", 1)[1]
    view = client.get(f"/api/media/{media_id}", headers=auth).get_json()
    assert view["status"] == "pending" and view["url"] is None
    assert view["upload"]["offset"] == 5000 and view["upload"]["length"] == len(data)
    bob = {"Authorization": f"Bearer {token('bob')}"}
    assert client.get(f"/api/media/{media_id}", headers=bob).status_code == 404
    listed = client.get("/api/media?projectId=p1", headers=auth).get_json()["items"]
    assert listed == []  # not media yet


def test_a_creation_with_an_idempotency_key_is_made_once(client, auth, token, svc):
    keyed = {"Idempotency-Key": "clip-7"}
    first = create(client, auth, 10_000, headers=keyed)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    location = path_of(first)
    assert patch(client, auth, location, 0, samples.photo(1600, 1200)[:4000]).status_code == 204
    again = create(client, auth, 10_000, headers=keyed)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert path_of(again) == location
    assert (again.headers["Upload-Offset"], again.headers["Upload-Length"]) == ("4000", "10000")
    other = create(client, auth, 10_001, headers=keyed)
    assert (other.status_code, error(other)) == (422, "idempotency_key_mismatch")
    bob = {"Authorization": f"Bearer {token('bob')}"}
    assert path_of(create(client, bob, 10_000, headers=keyed)) != location  # keys are per caller
    assert svc.records.count_pending(tenant="", owner="alice", at_most=10) == 1


def test_a_refused_creation_frees_its_idempotency_key(client, auth, svc):
    keyed = {"Idempotency-Key": "big-1"}
    refused = create(client, auth, svc.settings.tus_max_bytes + 1, headers=keyed)
    assert refused.status_code == 413
    assert_nothing_left(svc)
    assert create(client, auth, 1000, headers=keyed).status_code == 201


@ON_CEPH
def test_an_upload_across_gateway_restarts_gets_the_sha256_of_its_bytes(settings, auth):
    """Each PATCH on a new gateway (the hash state travels in the record), one of them
    interrupted: the stored record's SHA-256 is that of exactly the bytes stored."""
    from gateway import create_app

    data = samples.photo(800, 600) + bytes(range(256)) * 30_000
    cuts = [0, 70_001, 3 * MiB + 5, len(data)]
    location = None
    for start, end in itertools.pairwise(cuts):
        app = create_app(settings)  # a gateway that never saw the earlier requests
        app.config["TESTING"] = True
        client = app.test_client()
        if location is None:
            location = path_of(create(client, auth, len(data)))
        assert patch(client, auth, location, start, data[start:end]).status_code == 204
    svc = app.extensions["gateway"]
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status is Status.STORED and stored_bytes(svc, location) == data
    assert record.sha256 == hashlib.sha256(data).hexdigest()


def test_an_interrupted_request_keeps_the_hash_of_what_it_kept(client, auth, svc):
    data = samples.photo(1600, 1200)
    location = path_of(create(client, auth, len(data)))

    class Dropping(io.BytesIO):
        def readinto(self, buffer):
            if self.tell() >= 5000:
                raise OSError("connection reset")
            chunk = self.read(min(len(buffer), 5000 - self.tell()))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    answer = client.patch(
        location,
        input_stream=Dropping(data),
        headers={**V, **auth, "Upload-Offset": "0", "Content-Length": str(len(data)),
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip
    assert answer.status_code == 400 and error(answer) == "client_disconnected"
    assert head(client, auth, location).headers["Upload-Offset"] == "5000"
    assert patch(client, auth, location, 5000, data[5000:]).status_code == 204
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.sha256 == hashlib.sha256(data).hexdigest()
