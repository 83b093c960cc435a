"""The pending-upload lifecycle alone (gateway/uploads/pending.py): a SQLite record store, a clock the
test sets, parts removers that record what they were asked to remove, and a publisher that keeps
the events. Each branch: the cap, ownership, the expiry boundary, a lost compare-and-set, a
removal that fails, one expiry pass over both kinds, mark stored."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from gateway import errors
from gateway.media.events import Announcer, EventType, MediaEvent
from gateway.media.lifecycle import Status
from gateway.media.principal import Principal
from gateway.media.records import DirectUpload, MediaRecord, Sha256State, TusUpload, UploadState
from gateway.media.records.sqlite import SqliteRecordStore
from gateway.uploads.pending import EXPIRE_LIMIT, EXPIRED_REASONS, PendingUploads

EXPIRES = "2026-12-07T12:00:00+00:00"
AT_EXPIRY = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
CAP = 3
ALICE = Principal(subject="alice", tenant="t1", projects=None)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Publisher:
    def __init__(self) -> None:
        self.events: list[MediaEvent] = []

    def publish(self, events: Sequence[MediaEvent]) -> None:
        self.events += events


class Parts:
    """A ``PartsRemover`` that records each record it removes, or fails with ``fails``."""

    def __init__(self, fails: Exception | None = None) -> None:
        self.removed: list[MediaRecord] = []
        self.fails = fails

    def remove_parts(self, record: MediaRecord) -> None:
        self.removed.append(record)
        if self.fails is not None:
            raise self.fails


class CountingStore(SqliteRecordStore):
    """The SQLite store, keeping the arguments of the reads the lifecycle makes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.count_calls: list[tuple[str, str, int]] = []
        self.expired_calls: list[tuple[str, int]] = []

    def count_pending(self, *, tenant: str, owner: str, at_most: int) -> int:
        self.count_calls.append((tenant, owner, at_most))
        return super().count_pending(tenant=tenant, owner=owner, at_most=at_most)

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        self.expired_calls.append((now, limit))
        return super().expired_pending(now=now, limit=limit)


@pytest.fixture
def store(tmp_path) -> CountingStore:
    records = CountingStore(str(tmp_path / "records.db"))
    records.create_schema()
    return records


@pytest.fixture
def clock() -> Clock:
    return Clock(AT_EXPIRY)


@pytest.fixture
def publisher() -> Publisher:
    return Publisher()


@pytest.fixture
def pending(store, clock, publisher) -> PendingUploads:
    return PendingUploads(store, Announcer(publisher, clock=clock), CAP, clock)


def tus(expires_at: str = EXPIRES) -> TusUpload:
    return TusUpload(expires_at=expires_at, length=100, part_size=8 << 20)


def direct(expires_at: str = EXPIRES) -> DirectUpload:
    return DirectUpload(method="put", expires_at=expires_at)


def upload(
    store: SqliteRecordStore,
    n: int,
    state: UploadState | None = None,
    *,
    owner: str = "alice",
    tenant: str = "t1",
    status: Status = Status.PENDING,
) -> MediaRecord:
    media_id = f"{n:032x}"
    record = MediaRecord(
        media_id=media_id,
        project_id="p1",
        tenant=tenant,
        owner=owner,
        original_name=f"{n}.bin",
        file_type="other",
        mime_type="",
        s3_key=f"{tenant}/projects/p1/media/{media_id}",
        size=100,
        sha256="",
        sha256_state=Sha256State.PENDING,
        created_at="2026-12-07T10:00:00.000000+00:00",
        status=status,
        upload=state or tus(),
    )
    store.create_many([record])
    return record


# -- the cap ---------------------------------------------------------------------------------------
def test_room_up_to_the_cap_and_not_one_more(store, pending):
    for n in range(CAP - 1):
        upload(store, n)
    pending.check_room(ALICE)  # CAP - 1 pending + 1 = CAP
    pending.check_room(ALICE, 1)
    with pytest.raises(errors.TooManyPending) as refused:
        pending.check_room(ALICE, 2)
    assert (refused.value.status, refused.value.code) == (429, "too_many_pending")
    assert refused.value.message == f"{CAP - 1} uploads are pending; at most {CAP} may be."
    assert store.count_calls == [("t1", "alice", CAP)] * 3


def test_the_cap_counts_both_protocols_together(store, pending):
    upload(store, 1, tus())
    upload(store, 2, direct())
    upload(store, 3, direct())
    with pytest.raises(errors.TooManyPending):
        pending.check_room(ALICE)
    pending.check_room(ALICE, 0)


def test_the_cap_counts_only_the_callers_pending_uploads(store, pending):
    upload(store, 1, owner="bob")
    upload(store, 2, tenant="t2")
    upload(store, 3, status=Status.STORED)
    upload(store, 4)
    pending.check_room(ALICE, CAP - 1)
    with pytest.raises(errors.TooManyPending):
        pending.check_room(ALICE, CAP)


# -- ownership -------------------------------------------------------------------------------------
def test_get_owned_gives_the_callers_upload_of_that_kind_only(store, pending):
    own, own_direct = upload(store, 1, tus()), upload(store, 2, direct())
    others = upload(store, 3, owner="bob")
    assert pending.get_owned(ALICE, own.media_id, TusUpload) == own
    assert pending.get_owned(ALICE, own_direct.media_id, DirectUpload) == own_direct
    for media_id, kind in [
        (own.media_id, DirectUpload),
        (others.media_id, TusUpload),
        ("f" * 32, TusUpload),
    ]:
        with pytest.raises(errors.UploadNotFound):
            pending.get_owned(ALICE, media_id, kind)


# -- expiry ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "overdue"),
    [
        (AT_EXPIRY - timedelta(seconds=1), False),
        (AT_EXPIRY, False),
        (AT_EXPIRY + timedelta(microseconds=999_999), False),  # still the expiry's second
        (AT_EXPIRY + timedelta(seconds=1), True),
    ],
)
@pytest.mark.parametrize("state", [tus(), direct()])
def test_an_upload_is_overdue_only_after_its_expiry_second(
    store, pending, clock, now, overdue, state
):
    record = upload(store, 1, state)
    clock.now = now
    assert pending.is_overdue(record) is overdue


# -- end and remove --------------------------------------------------------------------------------
def test_end_records_the_status_then_removes_the_parts(store, pending):
    record, parts = upload(store, 1), Parts()
    ended = pending.end(record, Status.ABORTED, "Terminated by the client.", parts)
    assert ended is not None
    assert (ended.status, ended.reason) == (Status.ABORTED, "Terminated by the client.")
    assert store.get(record.media_id) == ended
    assert parts.removed == [record]


def test_end_after_the_record_moved_removes_nothing(store, pending):
    record, parts = upload(store, 1), Parts()
    moved = store.update(record.evolve(status=Status.STORED), expected=record)
    assert pending.end(record, Status.EXPIRED, "late", parts) is None
    assert store.get(record.media_id) == moved
    assert parts.removed == []


def test_a_removal_that_fails_is_logged_and_left_to_the_sweeper(store, pending, caplog):
    record, parts = upload(store, 1), Parts(fails=errors.StorageError())
    with caplog.at_level(logging.WARNING, logger="gateway.uploads.pending"):
        ended = pending.end(record, Status.ABORTED, "gone", parts)
    assert ended is not None and store.get(record.media_id).status is Status.ABORTED
    [entry] = caplog.records
    assert entry.levelno == logging.WARNING
    assert entry.exc_info and entry.exc_info[0] is errors.StorageError  # the trace is logged
    assert entry.getMessage() == (
        f"could not remove what upload {record.media_id} holds; the sweeper will"
    )


def test_a_removal_bug_is_not_swallowed(store, pending):
    record = upload(store, 1)
    with pytest.raises(RuntimeError):
        pending.end(record, Status.ABORTED, "gone", Parts(fails=RuntimeError("bug")))


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (tus(), "The upload expired before it was finished."),
        (direct(), "The upload expired before it was completed."),
    ],
)
def test_expire_gives_each_protocols_reason(store, pending, state, reason):
    record, parts = upload(store, 1, state), Parts()
    expired = pending.expire(record, parts)
    assert expired is not None and (expired.status, expired.reason) == (Status.EXPIRED, reason)
    assert EXPIRED_REASONS[type(state)] == reason
    assert parts.removed == [record]


# -- the sweeper's pass ----------------------------------------------------------------------------
def test_one_pass_expires_the_overdue_uploads_of_both_kinds(store, pending, clock):
    late = "2026-12-07T11:59:59+00:00"
    overdue_tus, overdue_direct = upload(store, 1, tus(late)), upload(store, 2, direct(late))
    on_time = [upload(store, 3, tus()), upload(store, 4, direct())]  # expire at the pass's second
    tus_parts, direct_parts = Parts(), Parts()
    expired = pending.expire_overdue({TusUpload: tus_parts, DirectUpload: direct_parts})
    assert [r.media_id for r in expired] == [overdue_tus.media_id, overdue_direct.media_id]
    assert all(r.status is Status.EXPIRED for r in expired)
    assert (tus_parts.removed, direct_parts.removed) == ([overdue_tus], [overdue_direct])
    assert [store.get(r.media_id).status for r in on_time] == [Status.PENDING] * 2
    assert store.expired_calls == [("2026-12-07T12:00:00+00:00", EXPIRE_LIMIT)]


def test_the_pass_leaves_kinds_it_is_not_given(store, pending):
    late = "2026-12-07T11:00:00+00:00"
    tus_upload, direct_upload = upload(store, 1, tus(late)), upload(store, 2, direct(late))
    parts = Parts()
    expired = pending.expire_overdue({DirectUpload: parts}, now=AT_EXPIRY, limit=7)
    assert [r.media_id for r in expired] == [direct_upload.media_id]
    assert parts.removed == [direct_upload]
    assert store.get(tus_upload.media_id).status is Status.PENDING
    assert store.expired_calls == [("2026-12-07T12:00:00+00:00", 7)]


def test_the_pass_uses_the_time_it_is_given(store, pending):
    upload(store, 1, tus())
    later = AT_EXPIRY + timedelta(seconds=1)
    assert len(pending.expire_overdue({TusUpload: Parts()}, now=later)) == 1
    assert store.expired_calls == [("2026-12-07T12:00:01+00:00", EXPIRE_LIMIT)]


def test_the_pass_skips_an_upload_that_moved_after_it_was_listed(store, pending):
    first = upload(store, 1, tus("2026-12-07T11:00:00+00:00"))
    second = upload(store, 2, tus("2026-12-07T11:00:01+00:00"))
    parts = Parts()
    listed = store.expired_pending

    def listed_then_completed(*, now: str, limit: int) -> list[MediaRecord]:
        records = listed(now=now, limit=limit)
        store.update(first.evolve(status=Status.STORED), expected=first)  # a PATCH finished it
        return records

    store.expired_pending = listed_then_completed  # type: ignore[method-assign]
    expired = pending.expire_overdue({TusUpload: parts})
    assert [r.media_id for r in expired] == [second.media_id]
    assert parts.removed == [second]
    assert store.get(first.media_id).status is Status.STORED


def test_overdue_lists_the_kinds_asked_for_and_changes_nothing(store, pending, clock):
    late = "2026-12-07T11:59:59+00:00"
    overdue_tus, overdue_direct = upload(store, 1, tus(late)), upload(store, 2, direct(late))
    upload(store, 3, tus())  # expires at the listing's second: not overdue
    listed = pending.overdue([TusUpload, DirectUpload])
    assert listed == [overdue_tus, overdue_direct]
    assert pending.overdue([DirectUpload], now=AT_EXPIRY, limit=9) == [overdue_direct]
    assert pending.overdue([]) == []
    assert store.expired_calls == [
        ("2026-12-07T12:00:00+00:00", EXPIRE_LIMIT),
        ("2026-12-07T12:00:00+00:00", 9),
        ("2026-12-07T12:00:00+00:00", EXPIRE_LIMIT),
    ]
    assert [store.get(r.media_id) for r in listed] == listed  # nothing moved


# -- mark stored -----------------------------------------------------------------------------------
def test_mark_stored_saves_and_announces_once(store, pending, publisher):
    record = upload(store, 1, direct())
    stored = pending.mark_stored(
        record,
        record.evolve(status=Status.STORED, sha256="ab" * 32, sha256_state=Sha256State.VERIFIED),
    )
    assert stored is not None and store.get(record.media_id) == stored
    assert stored.version == record.version + 1
    assert [(e.type, e.media_id) for e in publisher.events] == [(EventType.STORED, record.media_id)]


def test_mark_stored_after_the_record_moved_announces_nothing(store, pending, publisher):
    record, parts = upload(store, 1, direct()), Parts()
    aborted = pending.end(record, Status.ABORTED, "Aborted by the client.", parts)
    assert pending.mark_stored(record, record.evolve(status=Status.STORED)) is None
    assert store.get(record.media_id) == aborted and publisher.events == []


def test_announce_stored_announces_every_record(store, pending, publisher):
    records = [upload(store, n, status=Status.STORED) for n in (1, 2)]
    pending.announce_stored(records)
    assert [(e.type, e.media_id) for e in publisher.events] == [
        (EventType.STORED, r.media_id) for r in records
    ]
