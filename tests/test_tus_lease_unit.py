"""The lease alone, on a SQLite record store and a clock the test moves: when it can be taken,
how long a write may still count on it, what losing it does, and that the timer renews it."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from gateway import errors
from gateway.media.lifecycle import Status
from gateway.media.records import MediaRecord, Sha256State, TusUpload
from gateway.media.records.sqlite import SqliteRecordStore
from gateway.storage.resumable import LEASE_SLOTS, MAX_PARTS, part_number
from gateway.uploads.tus_lease import MIN_LEFT, RENEWALS_PER_LEASE, Lease, held

SECONDS = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    records = SqliteRecordStore(str(tmp_path / "records.db"))
    records.create_schema()
    return records


@pytest.fixture
def upload(store) -> MediaRecord:
    record = MediaRecord(
        media_id="a" * 32,
        project_id="p1",
        tenant="",
        owner="alice",
        original_name="a.bin",
        file_type="other",
        mime_type="",
        s3_key="projects/p1/media/" + "a" * 32,
        size=100,
        sha256="",
        sha256_state=Sha256State.PENDING,
        created_at="2026-01-01T00:00:00.000000+00:00",
        status=Status.PENDING,
        upload=TusUpload(expires_at="2026-01-02T00:00:00+00:00", length=100, part_size=8 << 20),
    )
    store.create_many([record])
    return record


def take(store, record, clock, seconds=SECONDS) -> Lease:
    return Lease.take(store, record, seconds=seconds, clock=clock)


def test_taking_writes_a_token_an_expiry_and_the_next_generation(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    held = store.get(upload.media_id).upload
    assert held.lock_token and len(held.lock_token) == 32
    assert held.lock_until == clock.now + SECONDS
    assert held.generation == 1 == lease.generation
    assert lease.record == store.get(upload.media_id)


def test_a_held_lease_is_refused_until_the_instant_it_ends(store, upload):
    clock = Clock()
    first = take(store, upload, clock)
    clock.now += SECONDS - 0.001
    with pytest.raises(errors.UploadLocked):
        take(store, first.record, clock)
    clock.now += 0.001  # lock_until == now: over
    second = take(store, first.record, clock)
    assert second.generation == 2


def test_taking_from_a_stale_record_is_refused(store, upload):
    clock = Clock()
    take(store, upload, clock)
    clock.now += 10 * SECONDS
    with pytest.raises(errors.UploadLocked):
        take(store, upload, clock)  # the version moved on


def test_a_write_needs_a_third_of_the_lease_left(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    clock.now += SECONDS * (1 - MIN_LEFT)  # exactly a third left
    lease.check()
    clock.now += 0.001
    with pytest.raises(errors.UploadLocked):
        lease.check()
    with pytest.raises(errors.UploadLocked):
        lease.write(lambda record: record)  # lost for good, even for writes to the record


def test_renewing_moves_the_end_to_a_whole_lease_from_now(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    clock.now += 50
    lease.renew()
    assert store.get(upload.media_id).upload.lock_until == clock.now + SECONDS
    lease.check()


def test_a_lease_taken_over_is_lost_at_the_next_write_and_every_check_after(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    clock.now += SECONDS
    other = take(store, lease.record, clock)
    clock.now -= SECONDS  # by its own clock, the first one still has time
    with pytest.raises(errors.UploadLocked):
        lease.renew()
    with pytest.raises(errors.UploadLocked):
        lease.check()
    assert store.get(upload.media_id).upload.lock_token == other.record.upload.lock_token


def test_the_last_write_ends_it_and_clears_the_lease_from_the_record(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    written = lease.write(lambda record: record.evolve(size=99), last=True)
    assert (written.size, written.upload.lock_token, written.upload.lock_until) == (99, "", 0.0)
    assert written.upload.generation == 1  # the generation stays: part numbers come from it
    with pytest.raises(errors.UploadLocked):
        lease.renew()
    assert store.get(upload.media_id) == written


def test_a_write_that_is_not_the_last_keeps_the_lease_in_the_record(store, upload):
    lease = take(store, upload, Clock())
    written = lease.write(lambda record: record.evolve(size=99))
    assert written.upload.lock_token == lease.record.upload.lock_token != ""
    assert written.upload.lock_until == 1_000_000.0 + SECONDS


def test_giving_back_is_the_last_write_unless_the_upload_was_taken_over(store, upload):
    clock = Clock()
    lease = take(store, upload, clock)
    assert lease.give_back(lambda record: record.evolve(size=7)) is True
    given = store.get(upload.media_id)
    assert (given.size, given.upload.lock_token) == (7, "")
    assert lease.give_back(lambda record: record.evolve(size=8)) is False  # ended: no more
    assert store.get(upload.media_id) == given

    first = take(store, given, clock)
    clock.now += SECONDS  # it ran out; another request takes the upload
    other = take(store, store.get(upload.media_id), clock)
    assert first.give_back(lambda record: record.evolve(size=9)) is False
    assert store.get(upload.media_id) == other.record


def test_an_upload_is_held_while_its_lease_runs_until_the_instant_it_ends(upload):
    leased = dataclasses.replace(upload.upload, lock_token="t", lock_until=100.0)
    assert held(leased, 99.9) and not held(leased, 100.0)
    assert not held(dataclasses.replace(leased, lock_token=""), 0.0)


def test_store_errors_pass_through_a_write_and_leave_the_lease_held(store, upload):
    clock = Clock()
    lease = take(store, upload, clock, seconds=SECONDS)

    def refused(record):
        raise errors.QuotaExceeded()

    with pytest.raises(errors.QuotaExceeded):
        lease.write(refused)
    lease.check()
    lease.renew()


def test_the_timer_renews_it_every_quarter_while_it_runs(store, upload):
    clock = Clock()
    renewed = threading.Event()
    lease = take(store, upload, clock, seconds=0.2)
    renew = lease.renew

    def counted():
        renew()
        renewed.set()

    lease.renew = counted
    lease.start()
    try:
        assert renewed.wait(10)
    finally:
        lease.stop()
    assert store.get(upload.media_id).version >= 2
    assert RENEWALS_PER_LEASE == 4


def test_part_numbers_ascend_with_the_index_and_differ_for_eight_leases_in_a_row():
    assert [part_number(0, g) for g in range(1, 9)] == [2, 3, 4, 5, 6, 7, 8, 1]
    assert part_number(1, 8) == 9 and part_number(1, 9) == 10
    for generation in range(20):
        numbers = [part_number(i, generation) for i in range(MAX_PARTS)]
        assert numbers == sorted(numbers) and numbers[-1] <= 10_000
    assert len({part_number(5, g) for g in range(LEASE_SLOTS)}) == LEASE_SLOTS
    assert MAX_PARTS == 1250


def test_the_part_size_fits_any_upload_in_its_parts(tmp_path):
    from gateway import create_app

    from conftest import make_settings

    svc = create_app(make_settings(tmp_path)).extensions["gateway"]
    mib = 1 << 20
    assert svc.tus.part_size_for(5 << 30) == 8 * mib  # the setting: 640 parts
    assert svc.tus.part_size_for(MAX_PARTS * 8 * mib) == 8 * mib
    assert svc.tus.part_size_for(MAX_PARTS * 8 * mib + 1) == 9 * mib
    assert svc.tus.part_size_for(20 << 30) == 17 * mib  # 16.4 MiB, in whole MiB
