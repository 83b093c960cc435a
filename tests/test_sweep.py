"""The sweeper (gateway.sweeper and `flask sweep`), on the local and the S3 (moto) backends.

It aborts multipart uploads older than the threshold, deletes journaled orphans and objects
older than the threshold that have no record, and leaves alone recorded objects, newer things,
and keys the gateway did not make. --dry-run only reports.

Note: moto reports every multipart upload as initiated at 2010-11-10T20:48:33Z, so the age
threshold for uploads is exercised with ``now`` placed relative to the upload's reported start.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from gateway.naming import new_media_id, object_key
from gateway.storage.local import LocalObjectStore

from support import assert_stored, form_body, png_bytes, read_object, record_ids

pytestmark = pytest.mark.timeout(60)

HOUR = timedelta(hours=1)
FOREIGN = "other/thing.txt"


@pytest.fixture(params=["local", "s3"])
def backend(request):
    """Overrides conftest's backend: the sweeper only cares about the object store."""
    return request.param


# -- helpers --------------------------------------------------------------------------------------
def upload(client, auth, content: bytes) -> dict:
    body, content_type = form_body([("projectId", "p1")], [("file", "cat.png", content)])
    response = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def put(svc, key: str, data: bytes = b"\x89PNG\r\n\x1a\n" + b"z" * 2000) -> str:
    writer = svc.store.open_writer(key, content_type="image/png", metadata={})
    writer.write(data)
    writer.commit(sha256="0" * 64)
    return key


def orphan_key(tenant: str = "") -> str:
    return object_key(tenant=tenant, project_id="p1", media_id=new_media_id(), extension=".png")


def start_pending(svc, key: str):
    """A writer whose bytes are durable but uncommitted, as a killed worker leaves it."""
    writer = svc.store.open_writer(key, content_type="image/png", metadata={})
    writer.write(b"\x89PNG\r\n\x1a\n" + b"p" * 5000)
    writer.spill()
    return writer


def objects(svc) -> set[str]:
    return {o.key for o in svc.store.objects()}


def pending(svc) -> list:
    return list(svc.store.pending_uploads())


def backdate(svc, path_key: str, age: timedelta) -> None:
    """Local only: make a file (object or temporary file) look ``age`` old."""
    assert isinstance(svc.store, LocalObjectStore)
    stamp = time.time() - age.total_seconds()
    os.utime(svc.store.root / path_key, (stamp, stamp))


def now() -> datetime:
    return datetime.now(UTC)


def sweep(svc, **kwargs) -> list[str]:
    """What one run removed (or would remove); it must not have failed anywhere."""
    report = svc.sweeper.sweep(**kwargs)
    assert report.failed == []
    return report.done


def key_of(svc, media: dict) -> str:
    """The store's key of an uploaded media item (answers show the full key)."""
    return svc.records.get(media["mediaId"]).s3_key


# -- what is removed, what stays ------------------------------------------------------------------
def test_sweep_removes_stale_uploads_and_unrecorded_objects_only(client, auth, svc):
    content = png_bytes(20_000)
    recorded = upload(client, auth, content)
    orphans = {put(svc, orphan_key()), put(svc, orphan_key(tenant="t9"))}
    put(svc, FOREIGN, b"not ours")
    put(svc, "projects/p1/media/not-a-media-id.png")  # gateway-like, but no media id
    writer = start_pending(svc, orphan_key())
    [stale] = pending(svc)

    report = sweep(svc, older_than=timedelta(0), now=now() + timedelta(seconds=1))

    assert sorted(report) == sorted(
        [f"abort upload {stale.key} ({stale.upload_id})"]
        + [f"delete unrecorded object {k}" for k in orphans]
    )
    assert pending(svc) == []
    assert objects(svc) == {key_of(svc, recorded), FOREIGN, "projects/p1/media/not-a-media-id.png"}
    assert_stored(svc, recorded, content)
    assert read_object(svc.store, FOREIGN) == b"not ours"
    writer.abort()


def test_sweep_with_nothing_to_do(client, auth, svc):
    recorded = upload(client, auth, png_bytes(5_000))
    assert sweep(svc, older_than=timedelta(0)) == []
    assert objects(svc) == {key_of(svc, recorded)}


def test_unrecorded_objects_newer_than_the_threshold_stay(svc):
    key = put(svc, orphan_key())
    modified = next(o.modified for o in svc.store.objects() if o.key == key)
    assert sweep(svc, older_than=HOUR, now=modified + HOUR - timedelta(seconds=1)) == []
    assert sweep(svc, older_than=HOUR, now=modified) == []  # not (yet) older than the threshold
    assert objects(svc) == {key}
    report = sweep(svc, older_than=HOUR, now=modified + HOUR + timedelta(seconds=1))
    assert report == [f"delete unrecorded object {key}"]
    assert objects(svc) == set()


def test_pending_uploads_newer_than_the_threshold_stay(svc):
    key = orphan_key()
    writer = start_pending(svc, key)
    [upload_] = pending(svc)
    assert sweep(svc, older_than=HOUR, now=upload_.started + HOUR - timedelta(seconds=1)) == []
    assert len(pending(svc)) == 1
    report = sweep(svc, older_than=HOUR, now=upload_.started + HOUR + timedelta(seconds=1))
    assert report == [f"abort upload {upload_.key} ({upload_.upload_id})"]
    assert pending(svc) == [] and objects(svc) == set()
    writer.abort()  # the "dead" worker's writer: its own abort is harmless now


@pytest.mark.parametrize("backend", ["local"])  # backdating files; moto fixes upload starts
def test_local_sweep_splits_old_from_new_by_age(svc):
    old_orphan, new_orphan = put(svc, orphan_key()), put(svc, orphan_key())
    backdate(svc, old_orphan, 2 * HOUR)
    old_writer = start_pending(svc, orphan_key())
    [old_upload] = pending(svc)
    backdate(svc, old_upload.upload_id, 2 * HOUR)  # the temporary file
    new_writer = start_pending(svc, orphan_key())

    report = sweep(svc, older_than=HOUR)

    assert sorted(report) == sorted(
        [
            f"abort upload {old_upload.key} ({old_upload.upload_id})",
            f"delete unrecorded object {old_orphan}",
        ]
    )
    assert objects(svc) == {new_orphan}
    assert [u.upload_id for u in pending(svc)] != [old_upload.upload_id]
    assert len(pending(svc)) == 1
    new_writer.abort()
    old_writer.abort()
    assert pending(svc) == []


@pytest.mark.parametrize("backend", ["s3"])
def test_s3_sweep_stays_inside_its_prefix(svc):
    outside = "elsewhere/" + orphan_key()  # gateway-shaped, but not under this store's prefix
    svc.store.client.put_object(Bucket=svc.store.bucket, Key=outside, Body=b"keep")
    put(svc, orphan_key())
    report = sweep(svc, older_than=timedelta(0), now=now() + timedelta(seconds=1))
    assert len(report) == 1
    listed = svc.store.client.list_objects_v2(Bucket=svc.store.bucket)["Contents"]
    assert [item["Key"] for item in listed] == [outside]


# -- the orphan journal ---------------------------------------------------------------------------
def test_journaled_orphans_are_deleted_and_forgotten(client, auth, svc):
    recorded = upload(client, auth, png_bytes(8_000))
    orphan = put(svc, orphan_key())
    svc.journal.add(orphan, "rollback delete failed")
    svc.journal.add(key_of(svc, recorded), "journaled, but the record exists after all")
    gone = orphan_key()
    svc.journal.add(gone, "already gone")

    # A journaled orphan goes whatever its age: the threshold is for unjournaled objects.
    report = sweep(svc, older_than=24 * HOUR)

    assert sorted(report) == sorted(
        [f"delete journaled orphan {orphan}", f"delete journaled orphan {gone}"]
    )
    assert svc.journal.list_keys() == []
    assert objects(svc) == {key_of(svc, recorded)}
    assert svc.records.get(recorded["mediaId"]).s3_key == key_of(svc, recorded)


# -- dry run --------------------------------------------------------------------------------------
def test_dry_run_reports_but_removes_nothing(client, auth, svc):
    recorded = upload(client, auth, png_bytes(8_000))
    orphan = put(svc, orphan_key())
    journaled = put(svc, orphan_key())
    svc.journal.add(journaled, "rollback delete failed")
    writer = start_pending(svc, orphan_key())
    before = (objects(svc), [u.upload_id for u in pending(svc)], record_ids(svc.records))

    report = sweep(svc, older_than=timedelta(0), dry_run=True, now=now() + timedelta(seconds=1))

    assert sorted(line.split(" ")[0] for line in report) == ["abort", "delete", "delete"]
    assert f"delete journaled orphan {journaled}" in report
    assert f"delete unrecorded object {orphan}" in report
    assert (objects(svc), [u.upload_id for u in pending(svc)], record_ids(svc.records)) == before
    assert svc.journal.list_keys() == [journaled]
    assert key_of(svc, recorded) in objects(svc)

    # The real run removes exactly what the dry run listed.
    assert sorted(sweep(svc, older_than=timedelta(0), now=now() + timedelta(seconds=1))) == sorted(
        report
    )
    writer.abort()


# -- the flask command ----------------------------------------------------------------------------
def test_cli_sweep(app, client, auth, svc):
    recorded = upload(client, auth, png_bytes(8_000))
    orphan = put(svc, orphan_key())
    writer = start_pending(svc, orphan_key())
    put(svc, FOREIGN, b"not ours")
    runner = app.test_cli_runner()
    time.sleep(0.01)  # "older than 0s": strictly before the command's own clock

    dry = runner.invoke(args=["sweep", "--older-than", "0s", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"delete unrecorded object {orphan}" in dry.output
    assert "would remove 2" in dry.output
    assert orphan in objects(svc) and len(pending(svc)) == 1

    result = runner.invoke(args=["sweep", "--older-than", "0s"])
    assert result.exit_code == 0, result.output
    assert f"delete unrecorded object {orphan}" in result.output
    assert result.output.strip().endswith("removed 2")
    assert objects(svc) == {key_of(svc, recorded), FOREIGN}
    assert pending(svc) == []

    again = runner.invoke(args=["sweep", "--older-than", "0s"])
    assert again.exit_code == 0 and again.output.strip() == "removed 0"
    writer.abort()


def test_cli_sweep_default_threshold_keeps_fresh_orphans(app, svc):
    orphan = put(svc, orphan_key())
    result = app.test_cli_runner().invoke(args=["sweep"])
    assert result.exit_code == 0, result.output
    assert orphan in objects(svc)


@pytest.mark.parametrize("backend", ["local"])
@pytest.mark.parametrize("bad", ["", "10", "5x", "-1h", "1.5h"])
def test_cli_sweep_refuses_a_bad_duration(app, svc, bad):
    orphan = put(svc, orphan_key())
    result = app.test_cli_runner().invoke(args=["sweep", "--older-than", bad])
    assert result.exit_code == 2
    assert "use a number and s, m, h or d" in result.output
    assert orphan in objects(svc)


# -- one failure does not stop a run --------------------------------------------------------------
def _failing_delete(svc, monkeypatch, bad: set[str]) -> None:
    from gateway.errors import StorageError

    real = svc.store.delete

    def delete(key: str) -> None:
        if key in bad:
            raise StorageError("injected")
        real(key)

    monkeypatch.setattr(svc.store, "delete", delete)


def test_a_failing_delete_is_reported_and_the_run_goes_on(svc, monkeypatch):
    orphans = sorted(put(svc, orphan_key()) for _ in range(3))
    journaled_ok, journaled_bad = put(svc, orphan_key()), put(svc, orphan_key())
    svc.journal.add(journaled_ok, "rollback incomplete")
    svc.journal.add(journaled_bad, "rollback incomplete")
    _failing_delete(svc, monkeypatch, {orphans[1], journaled_bad})
    report = svc.sweeper.sweep(older_than=timedelta(0), now=now() + timedelta(seconds=1))
    assert sorted(report.failed) == sorted(
        [f"delete unrecorded object {orphans[1]}", f"delete journaled orphan {journaled_bad}"]
    )
    assert sorted(report.done) == sorted(
        [
            f"delete unrecorded object {orphans[0]}",
            f"delete unrecorded object {orphans[2]}",
            f"delete journaled orphan {journaled_ok}",
        ]
    )
    assert objects(svc) == {orphans[1], journaled_bad}
    assert svc.journal.list_keys() == [journaled_bad]  # kept for the next run
    monkeypatch.undo()
    assert sorted(sweep(svc, older_than=timedelta(0), now=now() + timedelta(seconds=1))) == sorted(
        [f"delete unrecorded object {orphans[1]}", f"delete journaled orphan {journaled_bad}"]
    )
    assert objects(svc) == set() and svc.journal.list_keys() == []


def test_cli_sweep_exits_nonzero_only_after_trying_everything(app, svc, monkeypatch):
    bad, good = put(svc, orphan_key()), put(svc, orphan_key())
    _failing_delete(svc, monkeypatch, {bad})
    time.sleep(0.01)
    result = app.test_cli_runner().invoke(args=["sweep", "--older-than", "0s"])
    assert result.exit_code == 1, result.output
    assert f"FAILED delete unrecorded object {bad}" in result.output
    assert f"delete unrecorded object {good}" in result.output
    assert result.output.strip().endswith("removed 1, failed 1")
    assert objects(svc) == {bad}


def test_a_record_store_outage_keeps_every_object(svc, monkeypatch):
    from gateway.errors import RecordStoreError

    orphan = put(svc, orphan_key())

    def down(media_id):
        raise RecordStoreError()

    monkeypatch.setattr(svc.records, "get", down)
    report = svc.sweeper.sweep(older_than=timedelta(0), now=now() + timedelta(seconds=1))
    assert report.done == [] and report.failed == [f"look up the record of {orphan}"]
    assert orphan in objects(svc)
