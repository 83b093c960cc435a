"""The sweeper (gateway.uploads.sweeper and `flask sweep`), on the local and the S3 (moto) backends.

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

from gateway.media.naming import new_media_id
from gateway.storage.keys import object_key
from gateway.storage.local import LocalObjectStore

from conftest import also_on_ceph
from support import assert_stored, form_body, png_bytes, read_object, record_ids

pytestmark = pytest.mark.timeout(60)
ON_CEPH = also_on_ceph("local", "s3")  # listing, ages and deletes of a real store: Ceph too

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
@ON_CEPH
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


@ON_CEPH
def test_unrecorded_objects_newer_than_the_threshold_stay(svc):
    key = put(svc, orphan_key())
    modified = next(o.modified for o in svc.store.objects() if o.key == key)
    assert sweep(svc, older_than=HOUR, now=modified + HOUR - timedelta(seconds=1)) == []
    assert sweep(svc, older_than=HOUR, now=modified) == []  # not (yet) older than the threshold
    assert objects(svc) == {key}
    report = sweep(svc, older_than=HOUR, now=modified + HOUR + timedelta(seconds=1))
    assert report == [f"delete unrecorded object {key}"]
    assert objects(svc) == set()


@ON_CEPH
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


@pytest.mark.parametrize("backend", ["s3", "ceph"])
def test_s3_sweep_stays_inside_its_prefix(svc):
    outside = "elsewhere/" + orphan_key()  # gateway-shaped, but not under this store's prefix
    svc.store.client.put_object(Bucket=svc.store.bucket, Key=outside, Body=b"keep")
    put(svc, orphan_key())
    report = sweep(svc, older_than=timedelta(0), now=now() + timedelta(seconds=1))
    assert len(report) == 1
    listed = svc.store.client.list_objects_v2(Bucket=svc.store.bucket)["Contents"]
    assert [item["Key"] for item in listed] == [outside]


# -- the orphan journal ---------------------------------------------------------------------------
@ON_CEPH
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
@ON_CEPH
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
@ON_CEPH
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


# -- the sweeper alone, on fakes: every branch, every failure, exact ages -------------------------
import logging  # noqa: E402

from gateway import errors as _errors  # noqa: E402
from gateway.media.events import Announcer, LogPublisher  # noqa: E402
from gateway.media.lifecycle import Status  # noqa: E402
from gateway.media.records import DirectUpload, MediaRecord, TusUpload  # noqa: E402
from gateway.storage import ObjectInfo, PendingUpload  # noqa: E402
from gateway.storage.keys import parse_key, staging_key  # noqa: E402
from gateway.uploads.pending import EXPIRE_LIMIT, EXPIRED_REASONS, PendingUploads  # noqa: E402
from gateway.uploads.sweeper import Sweeper  # noqa: E402

NOW = datetime(2024, 5, 6, 12, 0, 0, 500000, tzinfo=UTC)
OLD = NOW - 2 * HOUR


def _key(n: int, extension: str = ".png") -> str:
    return object_key(tenant="", project_id="p1", media_id=f"{n:032x}", extension=extension)


def _record(key: str, status: Status = Status.STORED, upload=None) -> MediaRecord:
    media_id = parse_key(key)[0]
    assert media_id is not None
    return MediaRecord(
        media_id=media_id,
        project_id="p1",
        tenant="",
        owner="alice",
        original_name="a.png",
        file_type="image",
        mime_type="image/png",
        s3_key=key,
        size=1,
        sha256="0" * 64,
        created_at="2024-01-01T00:00:00.000000+00:00",
        status=status,
        upload=upload or DirectUpload(method="multipart", expires_at="2024-01-01T00:00:00+00:00"),
    )


class FakeRecords:
    def __init__(self, *records: MediaRecord) -> None:
        self.by_id = {r.media_id: r for r in records}
        self.down = False
        self.expired_calls: list[tuple[str, int]] = []
        self.expired_down = False
        self.stalled_calls: list[tuple[str, int]] = []
        self.stalled_down = False
        self.reservation_calls: list[tuple[float, int]] = []

    def get(self, media_id: str) -> MediaRecord:
        if self.down:
            raise _errors.RecordStoreError()
        if media_id not in self.by_id:
            raise _errors.MediaNotFound()
        return self.by_id[media_id]

    def end_expired_reservations(self, *, now: float, limit: int) -> int:
        self.reservation_calls.append((now, limit))
        return 0

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        self.expired_calls.append((now, limit))
        if self.expired_down:
            raise _errors.RecordStoreError()
        return [r for r in self.by_id.values() if r.status is Status.PENDING]

    def update(self, record: MediaRecord, *, expected: MediaRecord) -> MediaRecord | None:
        """Compare-and-set, as the record stores do."""
        if self.by_id.get(expected.media_id) != expected:
            return None
        self.by_id[record.media_id] = record
        return record

    def stalled(self, *, created_before: str, limit: int) -> list[MediaRecord]:
        self.stalled_calls.append((created_before, limit))
        if self.stalled_down:
            raise _errors.RecordStoreError()
        return [r for r in self.by_id.values() if r.status is Status.STORED]


class FakeStorage:
    """Store and listing in one: what exists, what was removed, what fails."""

    def __init__(self, objects=(), uploads=(), fail=(), broken_listing_after=None) -> None:
        self.objects_ = [ObjectInfo(key, 1, modified) for key, modified in objects]
        self.uploads = [PendingUpload(key, f"id-{key}", started) for key, started in uploads]
        self.fail = set(fail)
        self.broken_listing_after = broken_listing_after
        self.deleted: list[str] = []
        self.aborted: list[str] = []

    def pending_uploads(self):
        return iter(self.uploads)

    def abort_pending(self, upload: PendingUpload) -> None:
        if upload.key in self.fail:
            raise _errors.StorageError()
        self.aborted.append(upload.key)

    def objects(self):
        for index, obj in enumerate(self.objects_):
            if index == self.broken_listing_after:
                raise _errors.StorageError("listing broke")
            yield obj

    def delete(self, key: str) -> None:
        if key in self.fail:
            raise _errors.StorageError()
        self.deleted.append(key)


class FakeJournal:
    def __init__(self, *keys: str, unreadable=False, unwritable=False) -> None:
        self.keys = list(keys)
        self.unreadable, self.unwritable = unreadable, unwritable
        self.forgotten: list[set[str]] = []

    def list_keys(self) -> list[str]:
        if self.unreadable:
            raise OSError("journal unreadable")
        return list(self.keys)

    def forget(self, keys: set[str]) -> None:
        if self.unwritable:
            raise OSError("journal unwritable")
        self.forgotten.append(set(keys))


class FakeParts:
    """A protocol's ``PartsRemover``: the records whose parts it was asked to remove."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove_parts(self, record: MediaRecord) -> None:
        self.removed.append(record.media_id)


class FakeQuarantine:
    def __init__(self, storage: FakeStorage) -> None:
        self.store = storage


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, body, *, delay: float = 0) -> None:
        self.sent.append(body)


def _sweeper(
    storage=None,
    records=None,
    journal=None,
    direct=None,
    clock=lambda: NOW,
    quarantine=None,
    queue=None,
    keep_infected=False,
    tus=None,
):
    storage = storage or FakeStorage()
    records = records or FakeRecords()
    uploads = {kind: parts for kind, parts in ((DirectUpload, direct), (TusUpload, tus)) if parts}
    return Sweeper(
        store=storage,
        listing=storage,
        records=records,
        journal=journal or FakeJournal(),
        pending=PendingUploads(records, Announcer(LogPublisher()), max_pending=1),
        uploads=uploads,
        quarantine=quarantine,
        keep_infected=keep_infected,
        queue=queue,
        clock=clock,
    )


STAMP = "2024-05-06T12:00:00+00:00"  # NOW, as the records' expiry is written


def _tus_record(key: str) -> MediaRecord:
    return _record(
        key,
        Status.PENDING,
        TusUpload(expires_at="2024-01-01T00:00:00+00:00", length=1, part_size=1),
    )


def test_overdue_direct_uploads_are_expired_with_the_sweeps_time():
    first, second = _record(_key(11), Status.PENDING), _record(_key(12), Status.PENDING)
    records, direct = FakeRecords(first, second), FakeParts()
    storage = FakeStorage(objects=[(_key(1), OLD)])
    report = _sweeper(storage, records, direct=direct).sweep(older_than=HOUR, now=NOW)
    assert records.expired_calls == [(STAMP, EXPIRE_LIMIT)]
    assert direct.removed == [first.media_id, second.media_id]
    for record in (first, second):
        assert records.get(record.media_id).status is Status.EXPIRED
        assert records.get(record.media_id).reason == EXPIRED_REASONS[DirectUpload]
    assert report.done == [
        f"expire direct upload {first.media_id}",
        f"expire direct upload {second.media_id}",
        f"delete unrecorded object {_key(1)}",
    ]
    assert report.failed == []


def test_one_pass_expires_both_protocols_each_through_its_own_parts():
    direct_record, tus_record = _record(_key(11), Status.PENDING), _tus_record(_key(12))
    records, direct, tus = FakeRecords(direct_record, tus_record), FakeParts(), FakeParts()
    report = _sweeper(records=records, direct=direct, tus=tus).sweep(older_than=HOUR, now=NOW)
    assert records.expired_calls == [(STAMP, EXPIRE_LIMIT)]  # one pass for both
    assert (direct.removed, tus.removed) == ([direct_record.media_id], [tus_record.media_id])
    assert records.get(tus_record.media_id).reason == EXPIRED_REASONS[TusUpload]
    assert report.done == [
        f"expire direct upload {direct_record.media_id}",
        f"expire tus upload {tus_record.media_id}",
    ]
    assert report.failed == []


def test_only_the_protocols_given_are_expired():
    direct_record, tus_record = _record(_key(11), Status.PENDING), _tus_record(_key(12))
    records, tus = FakeRecords(direct_record, tus_record), FakeParts()
    report = _sweeper(records=records, tus=tus).sweep(older_than=HOUR, now=NOW)
    assert tus.removed == [tus_record.media_id]
    assert records.get(direct_record.media_id).status is Status.PENDING
    assert report.done == [f"expire tus upload {tus_record.media_id}"]


def test_the_default_time_is_the_sweepers_clock():
    records = FakeRecords()
    storage = FakeStorage(objects=[(_key(1), NOW - HOUR), (_key(2), NOW - HOUR * 1.01)])
    report = _sweeper(storage, records, direct=FakeParts()).sweep(older_than=HOUR)
    assert records.expired_calls == [(STAMP, EXPIRE_LIMIT)]
    assert (report.done, storage.deleted) == ([f"delete unrecorded object {_key(2)}"], [_key(2)])


def test_a_dry_run_lists_the_overdue_uploads_without_expiring_them():
    pending, tus_pending = _record(_key(3), Status.PENDING), _tus_record(_key(5))
    records, direct, tus = (
        FakeRecords(pending, _record(_key(4)), tus_pending),
        FakeParts(),
        FakeParts(),
    )
    sweeper = _sweeper(records=records, direct=direct, tus=tus)
    report = sweeper.sweep(older_than=HOUR, dry_run=True, now=NOW)
    assert (direct.removed, tus.removed) == ([], [])
    assert (
        records.get(pending.media_id) == pending
        and records.get(tus_pending.media_id) == tus_pending
    )
    assert records.expired_calls == [(STAMP, EXPIRE_LIMIT)]
    assert report.done == [
        f"expire direct upload {pending.media_id}",
        f"expire tus upload {tus_pending.media_id}",
    ]
    assert report.failed == []


@pytest.mark.parametrize(
    "direct, tus, what",
    [
        (True, False, "direct uploads"),
        (False, True, "tus uploads"),
        (True, True, "direct and tus uploads"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_failing_expiry_is_reported_and_the_run_goes_on(caplog, direct, tus, what, dry_run):
    records = FakeRecords()
    records.expired_down = True
    storage = FakeStorage(objects=[(_key(1), OLD)])
    sweeper = _sweeper(
        storage, records, direct=FakeParts() if direct else None, tus=FakeParts() if tus else None
    )
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = sweeper.sweep(older_than=HOUR, now=NOW, dry_run=dry_run)
    assert report.failed == [f"expire {what}"]
    assert report.done == [f"delete unrecorded object {_key(1)}"]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == f"could not expire overdue {what}"


def test_without_direct_uploads_nothing_is_expired():
    records = FakeRecords(_record(_key(3), Status.PENDING))
    report = _sweeper(records=records).sweep(older_than=HOUR, dry_run=True, now=NOW)
    assert records.expired_calls == [] and report.done == [] and report.failed == []


def test_uploads_started_exactly_at_the_cutoff_stay():
    storage = FakeStorage(
        uploads=[(_key(1), NOW - HOUR), (_key(2), NOW - HOUR - timedelta(microseconds=1))]
    )
    report = _sweeper(storage).sweep(older_than=HOUR, now=NOW)
    assert storage.aborted == [_key(2)]
    assert report.done == [f"abort upload {_key(2)} (id-{_key(2)})"]


def test_only_a_live_direct_upload_keeps_its_stale_multipart_upload():
    live, stored, elsewhere = _key(1), _key(2), _key(3)
    records = FakeRecords(
        _record(live, Status.PENDING),
        _record(stored, Status.STORED),
        _record(_key(3, ".mp4"), Status.PENDING),  # its record names another key
    )
    staging_of_live = staging_key(live)
    unknown, foreign = _key(4), "other/upload.bin"
    storage = FakeStorage(
        uploads=[(k, OLD) for k in (live, stored, elsewhere, staging_of_live, unknown, foreign)]
    )
    report = _sweeper(storage, records).sweep(older_than=HOUR, now=NOW)
    assert storage.aborted == [stored, elsewhere, staging_of_live, unknown, foreign]
    assert report.failed == []


def test_a_stale_upload_in_the_chunk_area_stays_only_while_its_tus_upload_is_pending():
    from gateway.storage.chunks import chunk_key

    going_on, finished = _tus_record(_key(1)), _record(_key(2), Status.STORED)
    live, done, unknown = (
        chunk_key(going_on.media_id, "parts"),
        chunk_key(finished.media_id, "parts"),
        chunk_key(f"{3:032x}", "parts"),
    )
    storage = FakeStorage(uploads=[(k, OLD) for k in (live, done, unknown)])
    report = _sweeper(storage, FakeRecords(going_on, finished)).sweep(older_than=HOUR, now=NOW)
    assert storage.aborted == [done, unknown]
    assert report.failed == []


def test_a_failing_abort_is_reported_and_the_others_still_aborted():
    storage = FakeStorage(uploads=[(_key(1), OLD), (_key(2), OLD)], fail={_key(1)})
    report = _sweeper(storage).sweep(older_than=HOUR, now=NOW)
    assert storage.aborted == [_key(2)]
    assert report.failed == [f"abort upload {_key(1)} (id-{_key(1)})"]


def test_a_dry_run_lists_every_item_and_touches_nothing():
    journaled = _key(9)
    storage = FakeStorage(
        objects=[(_key(1), OLD), (_key(2), OLD), (journaled, OLD)],
        uploads=[(_key(5), OLD), (_key(6), OLD)],
    )
    journal = FakeJournal(journaled)
    report = _sweeper(storage, journal=journal).sweep(older_than=HOUR, dry_run=True, now=NOW)
    assert report.done == [
        f"abort upload {_key(5)} (id-{_key(5)})",
        f"abort upload {_key(6)} (id-{_key(6)})",
        f"delete journaled orphan {journaled}",
        f"delete unrecorded object {_key(1)}",
        f"delete unrecorded object {_key(2)}",
    ]
    assert (storage.deleted, storage.aborted, journal.forgotten) == ([], [], [])


def test_objects_modified_exactly_at_the_cutoff_stay_and_the_listing_goes_on():
    journaled = _key(9)
    storage = FakeStorage(
        objects=[
            (journaled, OLD),  # handled as journaled, not twice
            (_key(1), NOW - HOUR),  # exactly at the cutoff: stays
            (_key(2), NOW - HOUR - timedelta(microseconds=1)),
            ("other/thing.txt", OLD),  # not gateway-made
            (_key(3), OLD),
        ]
    )
    report = _sweeper(storage, journal=FakeJournal(journaled)).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [journaled, _key(2), _key(3)]
    assert report.done == [
        f"delete journaled orphan {journaled}",
        f"delete unrecorded object {_key(2)}",
        f"delete unrecorded object {_key(3)}",
    ]


def test_a_broken_object_listing_is_reported_after_what_it_listed(caplog):
    storage = FakeStorage(objects=[(_key(1), OLD), (_key(2), OLD)], broken_listing_after=1)
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = _sweeper(storage).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [_key(1)]
    assert report.done == [f"delete unrecorded object {_key(1)}"]
    assert report.failed == ["list for delete unrecorded object"]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == "sweep could not list what to delete unrecorded object"


def test_a_failing_delete_is_logged_with_its_line(caplog):
    storage = FakeStorage(objects=[(_key(1), OLD)], fail={_key(1)})
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = _sweeper(storage).sweep(older_than=HOUR, now=NOW)
    assert report.failed == [f"delete unrecorded object {_key(1)}"]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == f"sweep could not delete unrecorded object {_key(1)}"


def test_journaled_keys_are_forgotten_except_those_not_deleted():
    ok, bad, owned = _key(1), _key(2), _key(3)
    storage = FakeStorage(fail={bad})
    journal = FakeJournal(ok, bad, owned)
    records = FakeRecords(_record(owned))
    report = _sweeper(storage, records, journal).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [ok]
    assert journal.forgotten == [{ok, owned}]  # an owned key is settled too: never deleted
    assert report.failed == [f"delete journaled orphan {bad}"]


def test_an_empty_journal_is_not_rewritten():
    journal = FakeJournal()
    _sweeper(journal=journal).sweep(older_than=HOUR, now=NOW)
    assert journal.forgotten == []


def test_an_unreadable_journal_is_reported_and_the_run_goes_on(caplog):
    storage = FakeStorage(objects=[(_key(1), OLD)])
    journal = FakeJournal(_key(2), unreadable=True)
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = _sweeper(storage, journal=journal).sweep(older_than=HOUR, now=NOW)
    assert report.failed == ["read the orphan journal"]
    assert report.done == [f"delete unrecorded object {_key(1)}"]
    assert journal.forgotten == []
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == "could not read the orphan journal"


def test_an_unwritable_journal_is_reported(caplog):
    storage = FakeStorage()
    journal = FakeJournal(_key(1), unwritable=True)
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = _sweeper(storage, journal=journal).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [_key(1)]
    assert report.done == [f"delete journaled orphan {_key(1)}"]
    assert report.failed == ["rewrite the orphan journal"]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == "could not rewrite the orphan journal"


def test_a_journaled_key_whose_record_cannot_be_read_is_kept():
    records = FakeRecords()
    records.down = True
    storage = FakeStorage()
    journal = FakeJournal(_key(1))
    report = _sweeper(storage, records, journal).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [] and report.done == []
    assert report.failed == [f"look up the record of {_key(1)}"]
    assert journal.forgotten == [{_key(1)}]  # stays owned; the record store decides later


@pytest.mark.parametrize(
    "status, owned",
    [
        (Status.PENDING, True),
        (Status.STORED, True),
        (Status.PROCESSING, True),
        (Status.READY, True),
        (Status.FAILED, True),
        (Status.INFECTED, False),
        (Status.REJECTED, False),
        (Status.ABORTED, False),
        (Status.EXPIRED, False),
    ],
)
def test_a_record_owns_its_key_by_its_status(status, owned):
    key = _key(1)
    storage = FakeStorage(objects=[(key, OLD)])
    _sweeper(storage, FakeRecords(_record(key, status))).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == ([] if owned else [key])


def test_a_record_owns_only_its_own_key():
    key, other = _key(1), _key(1, ".jpg")  # same media id, another key
    storage = FakeStorage(objects=[(other, OLD)])
    _sweeper(storage, FakeRecords(_record(key))).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [other]


@pytest.mark.parametrize(
    "status, owned", [(Status.PENDING, True), (Status.STORED, False), (Status.EXPIRED, False)]
)
def test_a_staging_key_is_owned_only_while_its_upload_is_pending(status, owned):
    key = _key(1)
    staged = staging_key(key)
    storage = FakeStorage(objects=[(staged, OLD)])
    _sweeper(storage, FakeRecords(_record(key, status))).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == ([] if owned else [staged])


def test_a_staging_key_of_another_key_is_not_owned():
    key = _key(1)
    staged_other = staging_key(_key(1, ".jpg"))
    storage = FakeStorage(objects=[(staged_other, OLD)])
    _sweeper(storage, FakeRecords(_record(key, Status.PENDING))).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [staged_other]


# -- processing that never started, the quarantine, derived files ---------------------------------
def test_media_stored_long_ago_is_queued_for_processing_again():
    stored, pending = _record(_key(1)), _record(_key(2), Status.PENDING)
    records, queue = FakeRecords(stored, pending), FakeQueue()
    report = _sweeper(records=records, queue=queue).sweep(older_than=HOUR, now=NOW)
    assert records.stalled_calls == [("2024-05-06T11:50:00.500000+00:00", 500)]
    assert queue.sent == [{"type": "media.process", "mediaId": stored.media_id}]
    assert (report.done, report.failed) == ([f"queue processing again for {stored.media_id}"], [])


def test_a_dry_run_lists_stalled_media_without_queueing():
    stored = _record(_key(1))
    queue = FakeQueue()
    report = _sweeper(records=FakeRecords(stored), queue=queue).sweep(
        older_than=HOUR, dry_run=True, now=NOW
    )
    assert queue.sent == [] and report.done == [f"queue processing again for {stored.media_id}"]


def test_without_a_queue_nothing_is_queued_again():
    records = FakeRecords(_record(_key(1)))
    report = _sweeper(records=records).sweep(older_than=HOUR, now=NOW)
    assert records.stalled_calls == [] and report.done == []


def test_failing_to_queue_again_is_reported_and_the_run_goes_on(caplog):
    records = FakeRecords(_record(_key(1)))
    records.stalled_down = True
    storage = FakeStorage(objects=[("other/x", OLD)], uploads=[(_key(5), OLD)])
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.sweeper"):
        report = _sweeper(storage, records, queue=FakeQueue()).sweep(older_than=HOUR, now=NOW)
    assert report.failed == ["queue stalled media"]
    assert report.done == [f"abort upload {_key(5)} (id-{_key(5)})"]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == "could not queue stalled media again"


def test_the_quarantine_is_swept_like_the_store():
    public = FakeStorage(objects=[(_key(1), OLD)], uploads=[(_key(3), OLD)])
    held = FakeStorage(objects=[(_key(2), OLD), (_key(6), NOW)], uploads=[(_key(4), OLD)])
    report = _sweeper(public, quarantine=FakeQuarantine(held)).sweep(older_than=HOUR, now=NOW)
    assert (public.aborted, held.aborted) == ([_key(3)], [_key(4)])
    assert (public.deleted, held.deleted) == ([_key(1)], [_key(2)])
    assert report.done == [
        f"abort upload {_key(3)} (id-{_key(3)})",
        f"abort upload {_key(4)} (id-{_key(4)})",
        f"delete unrecorded object {_key(1)}",
        f"delete unrecorded object {_key(2)} in the quarantine",
    ]
    assert report.failed == []


@pytest.mark.parametrize("keep", [False, True])
def test_an_infected_original_in_the_quarantine_stays_only_when_infected_files_are_kept(keep):
    held = FakeStorage(objects=[(_key(1), OLD)])
    infected = FakeRecords(_record(_key(1), Status.INFECTED))
    report = _sweeper(records=infected, quarantine=FakeQuarantine(held), keep_infected=keep).sweep(
        older_than=HOUR, now=NOW
    )
    assert held.deleted == ([] if keep else [_key(1)])
    assert report.failed == []


def test_a_journaled_orphan_is_deleted_from_the_store_and_the_quarantine():
    public, held = FakeStorage(), FakeStorage()
    journal = FakeJournal(_key(1))
    report = _sweeper(public, journal=journal, quarantine=FakeQuarantine(held)).sweep(
        older_than=HOUR, now=NOW
    )
    assert (public.deleted, held.deleted) == ([_key(1)], [_key(1)])
    assert report.done == [f"delete journaled orphan {_key(1)}"]
    assert journal.forgotten == [{_key(1)}]


def test_a_record_owns_its_derived_files_while_it_owns_its_object():
    from gateway.media.records import VariantInfo

    key = _key(1)
    variant = key.removesuffix(".png") + "/thumb-320.webp"
    stray = key.removesuffix(".png") + "/poster.webp"  # derived, but not listed in the record
    info = VariantInfo("thumb-320", variant, "image/webp", 320, 200, 10)
    for status, owned in ((Status.READY, True), (Status.INFECTED, False)):
        ready = _record(key, status).evolve(variants=[info])
        storage = FakeStorage(objects=[(variant, OLD), (stray, OLD)])
        _sweeper(storage, FakeRecords(ready)).sweep(older_than=HOUR, now=NOW)
        assert storage.deleted == ([stray] if owned else [variant, stray])


def test_a_record_store_outage_aborts_no_upload():
    records = FakeRecords()
    records.down = True
    storage = FakeStorage(uploads=[(_key(1), OLD)])
    report = _sweeper(storage, records).sweep(older_than=HOUR, now=NOW)
    assert storage.aborted == [] and report.done == []
    assert report.failed == ["list for abort upload"]


def test_a_journaled_key_the_gateway_did_not_make_is_never_deleted():
    storage = FakeStorage()
    journal = FakeJournal("other/thing.txt")
    report = _sweeper(storage, journal=journal).sweep(older_than=HOUR, now=NOW)
    assert storage.deleted == [] and report.done == [] and report.failed == []
    assert journal.forgotten == [{"other/thing.txt"}]


def test_the_sweep_ends_quota_reservations_a_dead_process_left(tmp_path):
    """A streamed upload whose process died keeps its reservation until its expiry; the sweep
    then gives the space back (a dry run changes nothing)."""
    from gateway import create_app
    from gateway.errors import QuotaExceeded

    from conftest import init_stores, make_settings

    svc = create_app(make_settings(tmp_path, quota_project_files=1)).extensions["gateway"]
    init_stores(svc)
    records = svc.records
    now = datetime.now(UTC)
    records.reserve("dead", tenant="", project_id="p1", files=1, bytes=0,
                    expires_at=(now - timedelta(seconds=1)).timestamp())  # fmt: skip
    rows = lambda: records._run(lambda c: c.execute("SELECT COUNT(*) FROM reservations").fetchone())
    assert svc.sweeper.sweep(older_than=timedelta(hours=1), dry_run=True, now=now).done == []
    assert rows() == (1,)
    report = svc.sweeper.sweep(older_than=timedelta(hours=1), now=now)
    assert "end 1 expired quota reservations" in report.done
    assert rows() == (0,)
    records.reserve("live", tenant="", project_id="p1", files=1, bytes=0,
                    expires_at=(now + timedelta(hours=1)).timestamp())  # fmt: skip
    with pytest.raises(QuotaExceeded):
        records.reserve("more", tenant="", project_id="p1", files=1, bytes=0,
                        expires_at=(now + timedelta(hours=1)).timestamp())  # fmt: skip
