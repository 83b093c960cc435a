"""Quotas on every protocol and backend pair: refused with 413 quota_exceeded before the bytes
are accepted, nothing left half-done, space given back by delete and abort, and concurrent
uploads that cannot overshoot."""

from __future__ import annotations

import io
import json
import threading
import uuid

import pytest
from botocore.exceptions import ClientError
from test_direct import initiate
from test_tus import create as tus_create
from test_tus import error as tus_error

from gateway import create_app, errors
from gateway.media.records import MediaRecord, Status
from gateway.media.records.dynamodb import RECOUNT_ATTEMPTS, TRANSACTION_ATTEMPTS
from gateway.media.records.quota import Held

from conftest import also_on_ceph, backend_settings, init_stores, make_settings
from support import MiB, assert_nothing_left, form_body, leftovers, mp4_bytes, png_bytes

ON_CEPH = also_on_ceph("local", "s3", "s3+dynamodb")  # the rollback of objects: Ceph too


@pytest.fixture
def quota_app(tmp_path, backend, request):
    """``quota_app(**quota settings)``: (app, svc, auth headers) with those limits."""

    def make(serial=False, **limits):
        if serial and backend != "local":  # tests/serial_moto.py
            moto = request.getfixturevalue("serial_moto_url")
            settings = make_settings(tmp_path, backend=backend, moto_url=moto, **limits)
        else:
            settings = backend_settings(request, tmp_path, backend, **limits)
        app = create_app(settings)
        app.config["TESTING"] = True
        svc = app.extensions["gateway"]
        init_stores(svc)
        from gateway.http.auth import mint_token

        with app.app_context():
            token = mint_token("alice")
        return app, svc, {"Authorization": f"Bearer {token}"}

    return make


def upload(client, auth, files, project="p1"):
    body, content_type = form_body([("projectId", project)], files)
    return client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})


def code_of(answer) -> str:
    return answer.get_json()["error"]["code"]


@ON_CEPH
def test_a_project_stores_exactly_its_file_quota_then_413(quota_app):
    app, svc, auth = quota_app(quota_project_files=2)
    client = app.test_client()
    assert upload(client, auth, [("files", "a.png", png_bytes()),
                                 ("files", "b.png", png_bytes(seed=2))]).status_code == 201  # fmt: skip
    before = leftovers(svc)
    refused = upload(client, auth, [("file", "c.png", png_bytes(seed=3))])
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")
    assert leftovers(svc) == before  # not a byte of it kept
    assert upload(client, auth, [("file", "c.png", png_bytes())], project="p2").status_code == 201


def test_a_body_longer_than_the_bytes_left_is_refused_before_its_file_is_written(quota_app):
    app, svc, auth = quota_app(quota_project_bytes=100_000)
    refused = upload(app.test_client(), auth, [("file", "big.mp4", mp4_bytes(150_000))])
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")
    assert_nothing_left(svc)
    ok = upload(app.test_client(), auth, [("file", "ok.mp4", mp4_bytes(90_000))])
    assert ok.status_code == 201  # what the first reserved was given back


@ON_CEPH
def test_a_request_whose_later_file_is_over_the_quota_keeps_none_of_its_files(quota_app):
    app, svc, auth = quota_app(quota_project_files=2)
    refused = upload(app.test_client(), auth, [("files", f"{n}.png", png_bytes(seed=n))
                                               for n in range(3)])  # fmt: skip
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")
    assert_nothing_left(svc)


@ON_CEPH
def test_a_chunked_body_is_reserved_as_it_arrives(quota_app):
    app, svc, auth = quota_app(quota_project_bytes=3 * MiB)
    body, content_type = form_body([("projectId", "p1")], [("file", "v.mp4", mp4_bytes(12 * MiB))])

    stream = io.BytesIO(body)
    refused = app.test_client().post(
        "/api/upload",
        input_stream=stream,
        headers={**auth, "Content-Type": content_type, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")
    assert 3 * MiB < stream.tell() < len(body)  # refused as the bytes passed the quota
    assert_nothing_left(svc)


@ON_CEPH
def test_delete_gives_the_space_back(quota_app):
    app, _, auth = quota_app(quota_project_files=1, quota_project_bytes=50_000)
    client = app.test_client()
    first = upload(client, auth, [("file", "a.png", png_bytes(30_000))])
    assert upload(client, auth, [("file", "b.png", png_bytes(10_000))]).status_code == 413
    assert (
        client.delete(f"/api/media/{first.get_json()['mediaId']}", headers=auth).status_code == 204
    )
    assert upload(client, auth, [("file", "b.png", png_bytes(10_000))]).status_code == 201


def test_a_tenant_quota_spans_its_projects(quota_app):
    app, _, auth = quota_app(quota_tenant_files=2)
    client = app.test_client()
    assert upload(client, auth, [("file", "a.png", png_bytes())], project="p1").status_code == 201
    assert upload(client, auth, [("file", "b.png", png_bytes())], project="p2").status_code == 201
    refused = upload(client, auth, [("file", "c.png", png_bytes())], project="p3")
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")


def test_concurrent_uploads_cannot_overshoot_the_quota(quota_app):
    app, svc, auth = quota_app(serial=True, quota_project_files=3)
    statuses: list[int] = []

    def one(n):
        answer = upload(app.test_client(), auth, [("file", f"{n}.png", png_bytes(seed=n))])
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] * 3 + [413] * 5
    left = leftovers(svc)
    assert (len(left["objects"]), len(left["records"]), left["pending_uploads"]) == (3, 3, [])


@ON_CEPH
def test_tus_creation_holds_its_length_and_termination_gives_it_back(quota_app):
    app, svc, auth = quota_app(quota_project_bytes=1_000_000)
    client = app.test_client()
    refused = tus_create(client, auth, 1_000_001)
    assert (refused.status_code, tus_error(refused)) == (413, "quota_exceeded")
    assert_nothing_left(svc)
    held = tus_create(client, auth, 800_000)
    assert held.status_code == 201
    assert tus_create(client, auth, 300_000).status_code == 413  # the first holds its length
    gone = client.delete(held.headers["Location"], headers={"Tus-Resumable": "1.0.0", **auth})
    assert gone.status_code == 204
    assert tus_create(client, auth, 300_000).status_code == 201


@pytest.mark.parametrize("backend", ["s3", "s3+dynamodb", "ceph"])
def test_direct_initiate_holds_the_promise_and_abort_gives_it_back(quota_app):
    app, svc, auth = quota_app(quota_project_bytes=10 * MiB)
    client = app.test_client()
    too_much = initiate(client, auth, [{"filename": "v.mp4", "contentType": "video/mp4",
                                        "size": 6 * MiB}] * 2)  # fmt: skip
    assert (too_much.status_code, code_of(too_much)) == (413, "quota_exceeded")
    assert_nothing_left(svc)  # the multipart uploads started for it were aborted
    held = initiate(client, auth, [{"filename": "v.mp4", "contentType": "video/mp4",
                                    "size": 8 * MiB}])  # fmt: skip
    assert held.status_code == 201
    upload_id = held.get_json()["uploads"][0]["uploadId"]
    assert upload(client, auth, [("file", "v.mp4", mp4_bytes(3 * MiB))]).status_code == 413
    assert client.post(f"/api/uploads/{upload_id}/abort", headers=auth).status_code == 200
    assert upload(client, auth, [("file", "v.mp4", mp4_bytes(3 * MiB))]).status_code == 201


def test_a_deferred_tus_length_is_held_once_declared(quota_app):
    app, _, auth = quota_app(quota_project_bytes=100_000)
    client = app.test_client()
    created = tus_create(client, auth)  # Upload-Defer-Length: 1
    assert created.status_code == 201
    location = created.headers["Location"]
    data = png_bytes(150_000)
    over = client.patch(location, data=data[:50_000], headers={
        "Tus-Resumable": "1.0.0", **auth, "Upload-Offset": "0", "Upload-Length": "150000",
        "Content-Type": "application/offset+octet-stream"})  # fmt: skip
    assert (over.status_code, tus_error(over)) == (413, "quota_exceeded")
    state = client.head(location, headers={"Tus-Resumable": "1.0.0", **auth})
    assert state.status_code == 200 and state.headers["Upload-Offset"] == "0"
    assert "Upload-Length" not in state.headers  # still deferred: nothing was taken
    fits = client.patch(location, data=data[:50_000], headers={
        "Tus-Resumable": "1.0.0", **auth, "Upload-Offset": "0", "Upload-Length": "90000",
        "Content-Type": "application/offset+octet-stream"})  # fmt: skip
    assert fits.status_code == 204, fits.get_json()


def tus_patch(client, auth, location, offset, data, **headers):
    return client.patch(location, data=data, headers={
        "Tus-Resumable": "1.0.0", **auth, "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream", **headers})  # fmt: skip


def test_deferred_lengths_hold_the_bytes_they_take_as_they_arrive(quota_app):
    """The review's bypass (3 x 20 MiB in a 30 MiB project, no length declared), scaled down:
    each deferred upload holds what it received; the one that would pass the quota is refused
    with nothing of its request counted, and what the project holds shows in /api/stats."""
    app, _svc, auth = quota_app(quota_project_bytes=100_000)
    client = app.test_client()
    data = png_bytes(40_000)
    locations = [tus_create(client, auth).headers["Location"] for _ in range(3)]
    for location in locations[:2]:
        assert tus_patch(client, auth, location, 0, data).status_code == 204
    refused = tus_patch(client, auth, locations[2], 0, data)
    assert (refused.status_code, tus_error(refused)) == (413, "quota_exceeded")
    state = client.head(locations[2], headers={"Tus-Resumable": "1.0.0", **auth})
    assert state.headers["Upload-Offset"] == "0"
    stats = client.get("/api/stats?projectId=p1", headers=auth).get_json()
    assert stats["byStatus"]["pending"] == {"files": 3, "bytes": 2 * len(data)}
    form = upload(client, auth, [("file", "c.png", png_bytes(30_000))])
    assert (form.status_code, code_of(form)) == (413, "quota_exceeded")
    fits = tus_patch(client, auth, locations[2], 0, data[:20_000])  # exactly what is left
    assert fits.status_code == 204 and fits.headers["Upload-Offset"] == "20000"
    stats = client.get("/api/stats?projectId=p1", headers=auth).get_json()
    assert stats["byStatus"]["pending"]["bytes"] == 100_000
    assert tus_patch(client, auth, locations[2], 20_000, b"x").status_code == 413


def test_a_deferred_upload_that_declares_its_length_holds_it_and_ends_at_its_size(quota_app):
    app, _svc, auth = quota_app(quota_project_bytes=100_000)
    client = app.test_client()
    data = png_bytes(60_000)
    location = tus_create(client, auth).headers["Location"]
    assert tus_patch(client, auth, location, 0, data[:10_000]).status_code == 204
    declared = tus_patch(client, auth, location, 10_000, data[10_000:20_000],
                         **{"Upload-Length": str(len(data))})  # fmt: skip
    assert declared.status_code == 204
    held = client.get("/api/stats?projectId=p1", headers=auth).get_json()["byStatus"]
    assert held["pending"]["bytes"] == len(data)  # the declared length, ahead of its bytes
    assert tus_patch(client, auth, location, 20_000, data[20_000:]).status_code == 204
    stats = client.get("/api/stats?projectId=p1", headers=auth).get_json()
    assert "pending" not in stats["byStatus"] and stats["bytes"] == len(data)


def tus_partials(client, auth, pieces):
    from test_tus import create as create_tus

    locations = []
    for piece in pieces:
        made = create_tus(client, auth, len(piece), headers={"Upload-Concat": "partial"},
                          data=piece)  # fmt: skip
        assert made.status_code == 201, made.get_json()
        locations.append(made.headers["Location"])
    return locations


def tus_final(client, auth, locations, project="p1"):
    from test_tus import V, meta

    return client.post("/api/tus/", headers={
        **V, **auth, "Upload-Metadata": meta(projectId=project, filename="whole.png"),
        "Upload-Concat": "final;" + " ".join(locations)})  # fmt: skip


@ON_CEPH
def test_concatenation_near_the_quota_swaps_the_partials_for_the_final_in_one_write(quota_app):
    """Two partials hold 20,000 of 30,000 bytes and 2 of 2 files: the final is stored (what
    the project holds is the same after the join), the partials are gone with it."""
    app, svc, auth = quota_app(quota_project_bytes=30_000, quota_project_files=2)
    client = app.test_client()
    data = png_bytes(20_000)
    partials = tus_partials(client, auth, [data[:10_000], data[10_000:]])
    final = tus_final(client, auth, partials)
    assert final.status_code == 201, final.get_json()
    media_id = final.headers["Location"].rsplit("/", 1)[1]
    assert leftovers(svc)["records"] == [media_id]
    stats = client.get("/api/stats?projectId=p1", headers=auth).get_json()
    assert (stats["files"], stats["bytes"]) == (1, len(data))
    assert "pending" not in stats["byStatus"]


def test_a_refused_final_leaves_nothing_and_keeps_its_partials(quota_app):
    app, svc, auth = quota_app(quota_project_bytes=30_000)
    client = app.test_client()
    pieces = [b"%PDF-1.4 not allowed here " + bytes(10_000), bytes(10_000)]
    partials = tus_partials(client, auth, pieces)
    before = leftovers(svc)
    refused = tus_final(client, auth, partials)
    assert (refused.status_code, tus_error(refused)) == (415, "unsupported_type")
    assert leftovers(svc) == before  # the partials, nothing more: no record, object, upload
    elsewhere = tus_final(client, auth, partials, project="p2")
    assert (elsewhere.status_code, tus_error(elsewhere)) == (400, "invalid_tus_header")
    assert leftovers(svc) == before


# -- recounting the DynamoDB ledgers (quotas turned on for a table that already has records) --------
def ledger(svc, pk: str) -> tuple[int, int] | None:
    item = svc.records.client.get_item(
        TableName=svc.records.table, Key={"pk": {"S": pk}}, ConsistentRead=True
    ).get("Item")
    return None if item is None else (int(item["files"]["N"]), int(item["bytes"]["N"]))


def gateways_before_and_after_quotas(tmp_path, moto_url, **limits):
    """Two apps on one bucket and table: one without quotas (the table's past), one with."""
    from gateway.http.auth import mint_token

    before = make_settings(tmp_path, backend="s3+dynamodb", moto_url=moto_url)
    apps = []
    for settings in (before, before.replace(**limits)):
        app = create_app(settings)
        app.config["TESTING"] = True
        with app.app_context():
            token = mint_token("alice")
        apps.append((app, app.extensions["gateway"], {"Authorization": f"Bearer {token}"}))
    init_stores(apps[0][1])
    return apps


@pytest.mark.slow
def test_recount_sets_the_ledgers_to_what_the_table_holds_then_quotas_hold(tmp_path, moto_url):
    (old, _, auth), (new, svc, new_auth) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_files=4, quota_tenant_bytes=10 * MiB
    )
    client = old.test_client()
    kept = [upload(client, auth, [("file", f"{n}.png", png_bytes(10_000 + n))]) for n in range(3)]
    assert [k.status_code for k in kept] == [201] * 3
    gone = kept[0].get_json()["mediaId"]
    assert client.delete(f"/api/media/{gone}", headers=auth).status_code == 204
    assert upload(client, auth, [("file", "q.png", png_bytes(5_000))], "p2").status_code == 201
    promised = initiate(client, auth, [{"filename": "v.mp4", "contentType": "video/mp4",
                                        "size": 3 * MiB}], project="p2")  # fmt: skip
    assert promised.status_code == 201  # pending, held at its promised size
    given_up = initiate(client, auth, [{"filename": "w.mp4", "contentType": "video/mp4",
                                        "size": 2 * MiB}], project="p2")  # fmt: skip
    upload_id = given_up.get_json()["uploads"][0]["uploadId"]
    assert client.post(f"/api/uploads/{upload_id}/abort", headers=auth).status_code == 200
    assert ledger(svc, "quota#p##p1") is None  # quotas were off: no ledger counted any of it

    result = new.test_cli_runner().invoke(args=["quota", "recount"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    p1 = (2, 10_001 + 10_002)
    p2 = (2, 5_000 + 3 * MiB)
    assert lines == [
        {"tenant": "", "projectId": "p1", "files": p1[0], "bytes": p1[1]},
        {"tenant": "", "projectId": "p2", "files": p2[0], "bytes": p2[1]},
    ]
    assert ledger(svc, "quota#p##p1") == p1 and ledger(svc, "quota#p##p2") == p2
    assert ledger(svc, "quota#t#") == (p1[0] + p2[0], p1[1] + p2[1])

    again = new.test_cli_runner().invoke(args=["quota", "recount"])  # idempotent
    assert again.exit_code == 0 and again.stdout == result.stdout
    assert ledger(svc, "quota#t#") == (p1[0] + p2[0], p1[1] + p2[1])

    fresh = new.test_client()
    for n in range(2):  # p1 holds 2 of its 4 files
        assert upload(fresh, new_auth, [("file", f"n{n}.png", png_bytes(1_000))]).status_code == 201
    refused = upload(fresh, new_auth, [("file", "x.png", png_bytes(1_000))])
    assert (refused.status_code, code_of(refused)) == (413, "quota_exceeded")
    too_big = upload(fresh, new_auth, [("file", "big.png", png_bytes(7 * MiB))], "p3")
    assert (too_big.status_code, code_of(too_big)) == (413, "quota_exceeded")  # tenant bytes


@pytest.mark.slow
def test_a_recount_raced_by_a_reservation_reads_again_and_is_exact(tmp_path, moto_url):
    (old, _, auth), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    assert (
        upload(old.test_client(), auth, [("file", "a.png", png_bytes(20_000))]).status_code == 201
    )
    store = svc.records
    store.reserve("other", tenant="", project_id="p2", files=1, bytes=3_000, expires_at=9e9)
    assert store.recount_ledgers() == [("", "p1", Held(1, 20_000)), ("", "p2", Held(1, 3_000))]
    reserved = store._reserved_by_scope
    snapshots = []
    get = store.client.transact_get_items

    def counted_get(**kwargs):
        snapshots.append(kwargs)
        return get(**kwargs)

    def raced():
        if len(snapshots) == 2:  # between p1's first snapshot and its write, an upload begins
            store.reserve("r1", tenant="", project_id="p1", files=1, bytes=7_000, expires_at=9e9)
        return reserved()

    store.client.transact_get_items = counted_get
    store._reserved_by_scope = raced
    assert store.recount_ledgers() == [("", "p1", Held(2, 27_000)), ("", "p2", Held(1, 3_000))]
    assert len(snapshots) == 3  # p1's first write found its ledger changed and read again
    assert ledger(svc, "quota#p##p1") == (2, 27_000)
    assert ledger(svc, "quota#t#") == (3, 30_000)
    store.end_reservation("r1")
    assert ledger(svc, "quota#p##p1") == (1, 20_000)
    assert ledger(svc, "quota#t#") == (2, 23_000)


def ledger_revision(svc, pk: str) -> int | None:
    item = svc.records.client.get_item(
        TableName=svc.records.table, Key={"pk": {"S": pk}}, ConsistentRead=True
    ).get("Item", {})
    return int(item["revision"]["N"]) if "revision" in item else None


def stored_record(size: int, project_id: str = "p1") -> MediaRecord:
    media_id = uuid.uuid4().hex
    return MediaRecord(
        media_id=media_id, project_id=project_id, tenant="", owner="alice",
        original_name="a.png", file_type="image", mime_type="image/png",
        s3_key=f"projects/{project_id}/media/{media_id}.png", size=size, sha256="ab" * 32,
        created_at="2026-01-01T00:00:00.000000+00:00",
    )  # fmt: skip


@pytest.mark.slow
def test_a_recount_raced_by_a_write_that_moves_nothing_in_sum_reads_again_and_is_exact(
    tmp_path, moto_url
):
    """An upload's bytes go from its reservation to its counters: the ledger's sums stay the
    same, but a snapshot taken before and a reservation read after would miss them."""
    (_, _, _), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    store = svc.records
    store.reserve("r1", tenant="", project_id="p1", files=1, bytes=7_000, expires_at=9e9)
    assert store.recount_ledgers() == [("", "p1", Held(1, 7_000))]
    revision = ledger_revision(svc, "quota#p##p1")
    reserved = store._reserved_by_scope

    def raced():
        if store._reserved_by_scope is raced:  # once: after p1's snapshot, before the read
            store._reserved_by_scope = reserved
            store.create_many([stored_record(7_000)], reservation="r1")
            assert ledger(svc, "quota#p##p1") == (1, 7_000)  # no sum moved
            assert ledger_revision(svc, "quota#p##p1") == revision + 1
        return reserved()

    store._reserved_by_scope = raced
    assert store.recount_ledgers() == [("", "p1", Held(1, 7_000))]
    assert store._reserved_by_scope is reserved  # the race did happen
    assert ledger(svc, "quota#p##p1") == (1, 7_000)
    assert ledger(svc, "quota#t#") == (1, 7_000)


@pytest.mark.slow
def test_every_write_that_changes_what_a_project_holds_bumps_its_revision(tmp_path, moto_url):
    (_, _, _), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    store = svc.records
    pk = "quota#p##p1"
    revisions = []
    store.reserve("r1", tenant="", project_id="p1", files=1, bytes=5_000, expires_at=9e9)
    revisions.append(ledger_revision(svc, pk))
    store.reserve("r1", tenant="", project_id="p1", files=0, bytes=0, expires_at=9e9 + 1)
    revisions.append(ledger_revision(svc, pk))  # a renewal holds nothing more: no write
    record = stored_record(5_000)
    store.create_many([record], reservation="r1")  # 5,000 bytes move, none in sum
    revisions.append(ledger_revision(svc, pk))
    processing = store.update(record.evolve(status=Status.PROCESSING), expected=record)
    revisions.append(ledger_revision(svc, pk))  # held to held: the counters' snapshot shows it
    store.reserve("r2", tenant="", project_id="p1", files=1, bytes=1_000, expires_at=9e9)
    store.end_reservation("r2")
    revisions.append(ledger_revision(svc, pk))
    store.delete(processing.media_id)
    revisions.append(ledger_revision(svc, pk))
    assert revisions == [1, 1, 2, 2, 4, 5]
    assert ledger(svc, pk) == (0, 0)
    assert ledger_revision(svc, "quota#t#") is None  # a tenant's ledger is only ever added to


@pytest.mark.slow
def test_a_recount_reads_reservations_strongly_consistently(tmp_path, moto_url):
    """moto's indexes are always current; DynamoDB's global secondary indexes are not, so the
    recount must not read reservations through one. Every read it makes is consistent."""
    (_, _, _), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    store = svc.records
    store.reserve("r1", tenant="", project_id="p1", files=1, bytes=7_000, expires_at=9e9)
    calls = []
    client = store.client
    client.meta.events.register(
        "provide-client-params.dynamodb.*",
        lambda params, model, **_: calls.append((model.name, params)),
    )
    assert store.recount_ledgers() == [("", "p1", Held(1, 7_000))]
    reads = [(name, params) for name, params in calls if not name.startswith("TransactWrite")]
    assert {name for name, _ in reads} == {"Scan", "TransactGetItems"}
    assert all(params["ConsistentRead"] is True for name, params in reads if name == "Scan")
    assert not any("IndexName" in params for _, params in reads)


def conflict(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
            "CancellationReasons": [{"Code": "TransactionConflict"}],
        },
        operation,
    )


@pytest.mark.slow
def test_a_recount_snapshot_that_conflicts_is_read_again(tmp_path, moto_url, monkeypatch):
    """A TransactGetItems conflicts with a write transaction in progress on its items (the
    fault is raised here: moto serialises transactions and never reports one)."""
    (_, _, _), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    monkeypatch.setattr("gateway.media.records.dynamodb.time.sleep", lambda _: None)
    store = svc.records
    store.reserve("r1", tenant="", project_id="p1", files=1, bytes=7_000, expires_at=9e9)
    get = store.client.transact_get_items
    failures = {"left": TRANSACTION_ATTEMPTS - 1}

    def conflicting(**kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise conflict("TransactGetItems")
        return get(**kwargs)

    store.client.transact_get_items = conflicting
    assert store.recount_ledgers() == [("", "p1", Held(1, 7_000))]
    assert failures["left"] == 0
    failures["left"] = TRANSACTION_ATTEMPTS  # a whole round's retries: read in the next round
    assert store.recount_ledgers() == [("", "p1", Held(1, 7_000))]
    assert failures["left"] == 0
    failures["left"] = TRANSACTION_ATTEMPTS * RECOUNT_ATTEMPTS
    with pytest.raises(errors.RecordStoreError):
        store.recount_ledgers()
    assert failures["left"] == 0
    assert ledger(svc, "quota#p##p1") == (1, 7_000)


@pytest.mark.slow
def test_a_commit_whose_reservation_the_sweeper_ended_meanwhile_releases_it_once(
    tmp_path, moto_url
):
    (_, _, _), (_, svc, _) = gateways_before_and_after_quotas(
        tmp_path, moto_url, quota_project_bytes=100 * MiB
    )
    store = svc.records
    store.reserve("r1", tenant="", project_id="p1", files=1, bytes=9_000, expires_at=9e9)
    read = store._reservation

    def swept_after_reading(reservation):
        held = read(reservation)
        if store._reservation is swept_after_reading:
            store._reservation = read
            store.end_reservation(reservation)  # (expired, says the sweeper)
        return held

    store._reservation = swept_after_reading
    store.create_many([stored_record(4_000)], reservation="r1")
    assert store._reservation is read
    assert ledger(svc, "quota#p##p1") == (1, 4_000)
    assert ledger(svc, "quota#t#") == (1, 4_000)
    assert store.recount_ledgers() == [("", "p1", Held(1, 4_000))]


def test_recount_needs_quotas_and_has_nothing_to_do_on_sqlite(tmp_path):
    app = create_app(make_settings(tmp_path))
    refused = app.test_cli_runner().invoke(args=["quota", "recount"])
    assert refused.exit_code == 1 and "No quota is set" in refused.output
    limited = create_app(make_settings(tmp_path, quota_project_files=1))
    init_stores(limited.extensions["gateway"])
    result = limited.test_cli_runner().invoke(args=["quota", "recount"])
    assert result.exit_code == 0
    assert result.output == (
        "SQLite checks quotas against its records directly: nothing to recount.\n"
    )
    assert limited.extensions["gateway"].records.recount_ledgers() == []
