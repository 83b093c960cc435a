"""gateway.media.service without HTTP: who sees a media item, who may list and delete, and what a
delete removes, on a SQLite record store and local object stores. (The routes: test_upload_api.py,
test_withheld_media.py, test_auth.py.)"""

from __future__ import annotations

import time
import uuid

import pytest

from gateway import errors
from gateway.media.events import Announcer, EventType, MediaEvent
from gateway.media.lifecycle import VISIBLE, Status
from gateway.media.orphans import OrphanJournal
from gateway.media.principal import Principal
from gateway.media.records import (
    DirectUpload,
    MediaRecord,
    Sha256State,
    TusUpload,
    VariantInfo,
)
from gateway.media.records.sqlite import SqliteRecordStore
from gateway.media.service import POLL_SECONDS, MediaService, PageRequest, ProjectScope
from gateway.storage.local import LocalObjectStore, LocalQuarantine

ALICE = Principal(subject="alice", tenant="t1", projects=frozenset({"p1"}))
BOB = Principal(subject="bob", tenant="t1", projects=frozenset({"p1"}))
ADMIN = Principal(subject="root", tenant="t1", projects=frozenset({"p1"}), admin=True)
ANY_PROJECT = Principal(subject="alice", tenant="t1", projects=None)
OTHER_PROJECT = Principal(subject="alice", tenant="t1", projects=frozenset({"p2"}))
OTHER_TENANT = Principal(subject="alice", tenant="t2", projects=None)
ENDED = sorted(set(Status) - VISIBLE - {Status.PENDING})


class Recorded:
    def __init__(self) -> None:
        self.events: list[MediaEvent] = []

    def publish(self, events) -> None:
        self.events.extend(events)


class FailingDeletes:
    """An object store whose deletes of ``failing`` keys fail as an unreachable store's do."""

    def __init__(self, store: LocalObjectStore, failing: set[str]) -> None:
        self.store = store
        self.failing = failing

    def delete(self, key: str) -> None:
        if key in self.failing:
            raise errors.StorageError()
        self.store.delete(key)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


class World:
    def __init__(self, tmp_path, *, holding: bool = True) -> None:
        self.records = SqliteRecordStore(str(tmp_path / "records.db"))
        self.records.create_schema()
        self.public = LocalObjectStore(tmp_path / "media")
        self.held = LocalObjectStore(tmp_path / "held")
        self.holding = LocalQuarantine(self.public, self.held) if holding else None
        self.journal = OrphanJournal(tmp_path / "orphans.jsonl")
        self.published = Recorded()
        self.store = self.public
        self.made = 0
        self.service = self.make()

    def make(self, **timing) -> MediaService:
        return MediaService(
            records=self.records,
            store=self.store,
            holding=self.holding,
            journal=self.journal,
            announcer=Announcer(self.published),
            **timing,
        )

    def put(self, store: LocalObjectStore, key: str) -> None:
        writer = store.open_writer(key, content_type="image/png", metadata={})
        writer.write(b"\x89PNG\r\n\x1a\n" + b"z" * 100)
        writer.commit(sha256="0" * 64)

    def add(self, *, quarantined: bool = False, variants: int = 0, **changes) -> MediaRecord:
        media_id = uuid.uuid4().hex
        key = f"t1/projects/p1/media/{media_id}.png"
        values = {
            "media_id": media_id,
            "project_id": "p1",
            "tenant": "t1",
            "owner": "alice",
            "original_name": "cat.png",
            "file_type": "image",
            "mime_type": "image/png",
            "s3_key": key,
            "size": 108,
            "sha256": "0" * 64,
            "created_at": f"2026-01-01T00:00:{self.made:02d}.000000+00:00",
            "quarantined": quarantined,
            "variants": [
                VariantInfo(f"thumb-{i}", f"{key}.thumb-{i}.webp", "image/webp", 1, 1, 9)
                for i in range(variants)
            ],
        }
        values.update(changes)
        record = MediaRecord(**values)
        self.records.create_many([record])
        self.made += 1
        if record.status in VISIBLE:
            held = quarantined and self.holding is not None
            self.put(self.held if held else self.public, key)
            for variant in record.variants:
                self.put(self.public, variant.key)
        return record

    def everything(self) -> tuple[list[str], list[str], list[str]]:
        """Every object in each place, and the journal's keys."""
        public = sorted(o.key for o in self.public.objects())
        held = sorted(o.key for o in self.held.objects())
        return public, held, self.journal.list_keys()


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def tus_pending(**changes) -> dict:
    return {
        "status": Status.PENDING,
        "sha256": "",
        "sha256_state": Sha256State.PENDING,
        "upload": TusUpload(expires_at="2026-01-02T00:00:00+00:00", length=100, part_size=8 << 20),
        **changes,
    }


# -- visibility ----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", sorted(VISIBLE))
def test_committed_media_are_visible_to_their_tenant_and_project(world, status):
    record = world.add(status=status)
    for principal in (ALICE, BOB, ADMIN, ANY_PROJECT):
        assert world.service.visible(principal, record.media_id) == record
        assert world.service.visible(principal, record.media_id, in_progress=True) == record


@pytest.mark.parametrize("principal", [OTHER_PROJECT, OTHER_TENANT])
def test_media_of_another_project_or_tenant_are_not_found(world, principal):
    record = world.add()
    for in_progress in (False, True):
        with pytest.raises(errors.MediaNotFound) as caught:
            world.service.visible(principal, record.media_id, in_progress=in_progress)
        assert (caught.value.status, caught.value.code) == (404, "media_not_found")


@pytest.mark.parametrize("status", ENDED)
def test_uploads_that_ended_without_media_are_not_found(world, status):
    record = world.add(status=status, reason="gone")
    for in_progress in (False, True):
        with pytest.raises(errors.MediaNotFound):
            world.service.visible(ALICE, record.media_id, in_progress=in_progress)


def test_a_tus_upload_arriving_is_visible_in_progress_to_who_may_modify_it(world):
    record = world.add(**tus_pending())
    assert world.service.visible(ALICE, record.media_id, in_progress=True) == record
    assert world.service.visible(ADMIN, record.media_id, in_progress=True) == record
    for principal in (BOB, OTHER_PROJECT, OTHER_TENANT):  # may see its project, not modify it
        with pytest.raises(errors.MediaNotFound):
            world.service.visible(principal, record.media_id, in_progress=True)
    with pytest.raises(errors.MediaNotFound):  # ...and only when asked for
        world.service.visible(ALICE, record.media_id)


def test_a_direct_upload_pending_is_not_visible_even_in_progress(world):
    direct = DirectUpload(method="put", expires_at="2026-01-02T00:00:00+00:00")
    record = world.add(**tus_pending(upload=direct))
    with pytest.raises(errors.MediaNotFound):
        world.service.visible(ALICE, record.media_id, in_progress=True)


@pytest.mark.parametrize(
    "media_id", ["", "x", "A" * 32, "../" + "a" * 29, "0123456789abcdef" * 2 + "0"]
)
def test_a_malformed_id_is_not_found_without_asking_the_store(world, media_id):
    class NoStore:
        def get(self, media_id):
            raise AssertionError("the store must not be asked")

    world.records = NoStore()
    with pytest.raises(errors.MediaNotFound):
        world.make().visible(ALICE, media_id)


def test_an_unknown_id_is_not_found(world):
    with pytest.raises(errors.MediaNotFound):
        world.service.visible(ALICE, uuid.uuid4().hex)


# -- waiting for a change (the long poll) ----------------------------------------------------------
class Waiting:
    """A clock that only sleeps move; ``on_sleep[n]`` runs during the n-th sleep (from 1)."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep or {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        action = self.on_sleep.get(len(self.sleeps))
        if action is not None:
            action()


def test_the_wait_ends_at_the_first_read_that_finds_another_version(world):
    record = world.add()
    processing = record.evolve(status=Status.PROCESSING)
    waiting = Waiting({3: lambda: world.records.update(processing, expected=record)})
    service = world.make(clock=waiting.clock, sleep=waiting.sleep)
    changed = service.wait_for_change(ALICE, record, version=record.version, timeout=30.0)
    assert changed.status is Status.PROCESSING and changed.version == record.version + 1
    assert waiting.sleeps == [POLL_SECONDS] * 3 and POLL_SECONDS == 0.5


def test_a_version_already_different_is_answered_without_waiting(world):
    record = world.add()
    waiting = Waiting()
    service = world.make(clock=waiting.clock, sleep=waiting.sleep)
    assert service.wait_for_change(ALICE, record, version=7, timeout=30.0) == record
    assert waiting.sleeps == []


def test_an_unchanged_item_is_answered_as_it_stands_once_the_timeout_has_passed(world):
    record = world.add()
    waiting = Waiting()
    service = world.make(clock=waiting.clock, sleep=waiting.sleep)
    assert service.wait_for_change(ALICE, record, version=record.version, timeout=2.0) == record
    assert waiting.sleeps == [POLL_SECONDS] * 4  # reads at 0.5, 1, 1.5 and 2 s
    assert waiting.now == 102.0


def test_an_item_deleted_while_waited_for_is_not_found(world):
    record = world.add()
    waiting = Waiting({2: lambda: world.records.delete(record.media_id)})
    service = world.make(clock=waiting.clock, sleep=waiting.sleep)
    with pytest.raises(errors.MediaNotFound):
        service.wait_for_change(ALICE, record, version=record.version, timeout=30.0)
    assert len(waiting.sleeps) == 2


def test_an_arriving_tus_upload_is_waited_for_by_its_owner(world):
    record = world.add(**tus_pending())
    grown = record.evolve(upload=TusUpload(**{**vars(record.upload), "offset": 50}))
    waiting = Waiting({1: lambda: world.records.update(grown, expected=record)})
    service = world.make(clock=waiting.clock, sleep=waiting.sleep)
    changed = service.wait_for_change(ALICE, record, version=record.version, timeout=30.0)
    assert changed.upload.offset == 50 and waiting.sleeps == [POLL_SECONDS]


def test_the_wait_runs_on_the_monotonic_clock_by_default(world):
    assert world.service.clock is time.monotonic and world.service.sleep is time.sleep


# -- listing -------------------------------------------------------------------------------------
def test_a_scope_is_the_callers_tenant_and_an_allowed_project(world):
    assert world.service.scope(ALICE, "p1") == ProjectScope(tenant="t1", project_id="p1")
    assert world.service.scope(ANY_PROJECT, "p9") == ProjectScope(tenant="t1", project_id="p9")
    with pytest.raises(errors.ProjectForbidden) as caught:
        world.service.scope(ALICE, "p2")
    assert (caught.value.status, caught.value.code) == (403, "project_forbidden")


def test_a_listing_is_the_scopes_committed_media_newest_first_paged(world):
    first, second = world.add(), world.add(status=Status.READY)
    world.add(**tus_pending())
    world.add(status=Status.EXPIRED, reason="late")
    world.add(project_id="p2")
    elsewhere = world.add(tenant="t2")
    service = world.service
    page = service.list_media(service.scope(ALICE, "p1"), PageRequest(limit=1))
    assert page.items == [second] and page.next_cursor is not None
    rest = service.list_media(service.scope(ALICE, "p1"), PageRequest(1, page.next_cursor))
    assert rest.items == [first] and rest.next_cursor is None
    ready = service.list_media(ProjectScope("t1", "p1"), PageRequest(10, status=Status.READY))
    assert ready.items == [second]
    assert service.list_media(ProjectScope("t2", "p1"), PageRequest(10)).items == [elsewhere]


# -- deleting ------------------------------------------------------------------------------------
def test_a_delete_removes_the_record_the_object_and_its_variants_then_announces(world):
    record = world.add(status=Status.READY, variants=2)
    kept = world.add()
    assert world.everything()[0] == sorted(
        [record.s3_key, *(v.key for v in record.variants), kept.s3_key]
    )
    assert world.service.delete(ALICE, record.media_id) == record
    with pytest.raises(errors.MediaNotFound):
        world.records.get(record.media_id)
    assert world.everything() == ([kept.s3_key], [], [])
    assert [(e.type, e.media_id) for e in world.published.events] == [
        (EventType.DELETED, record.media_id)
    ]


def test_a_quarantined_or_withheld_object_is_deleted_where_it_is_held(world):
    record = world.add(status=Status.FAILED, quarantined=True, reason="bomb", variants=1)
    assert world.everything() == ([record.variants[0].key], [record.s3_key], [])
    world.service.delete(ALICE, record.media_id)
    assert world.everything() == ([], [], [])


def test_without_a_holding_place_a_quarantined_object_is_deleted_in_the_public_store(tmp_path):
    world = World(tmp_path, holding=False)
    record = world.add(quarantined=True)
    assert world.everything() == ([record.s3_key], [], [])
    world.service.delete(ALICE, record.media_id)
    assert world.everything() == ([], [], [])


def test_an_admin_deletes_what_it_may_see_and_another_user_may_not(world):
    record = world.add()
    with pytest.raises(errors.DeleteForbidden) as caught:
        world.service.delete(BOB, record.media_id)
    assert (caught.value.status, caught.value.code) == (403, "delete_forbidden")
    assert world.records.get(record.media_id) == record  # nothing removed, nothing announced
    assert world.everything() == ([record.s3_key], [], [])
    assert world.published.events == []
    world.service.delete(ADMIN, record.media_id)
    assert world.everything() == ([], [], [])


@pytest.mark.parametrize("principal", [OTHER_PROJECT, OTHER_TENANT])
def test_a_stranger_deleting_gets_not_found_and_nothing_changes(world, principal):
    record = world.add()
    with pytest.raises(errors.MediaNotFound):
        world.service.delete(principal, record.media_id)
    assert world.records.get(record.media_id) == record
    assert world.everything() == ([record.s3_key], [], [])
    assert world.published.events == []


def test_an_upload_in_progress_cannot_be_deleted_here(world):
    record = world.add(**tus_pending())
    with pytest.raises(errors.MediaNotFound):
        world.service.delete(ALICE, record.media_id)
    assert world.records.get(record.media_id) == record


def test_objects_that_cannot_be_deleted_are_journaled_and_the_delete_succeeds(world):
    record = world.add(status=Status.READY, variants=2)
    stuck = {record.s3_key, record.variants[1].key}
    world.store = FailingDeletes(world.public, stuck)
    assert world.make().delete(ALICE, record.media_id) == record
    with pytest.raises(errors.MediaNotFound):
        world.records.get(record.media_id)
    public, held, journaled = world.everything()
    assert public == sorted(stuck) and held == []
    assert journaled == [record.s3_key, record.variants[1].key]  # in the order tried
    assert [e.type for e in world.published.events] == [EventType.DELETED]


def test_a_record_that_cannot_be_deleted_leaves_every_object_and_no_event(world):
    record = world.add(variants=1)

    class Failing(SqliteRecordStore):
        def delete(self, media_id):
            raise errors.RecordStoreError()

    world.records = Failing(world.records.path)
    with pytest.raises(errors.RecordStoreError):
        world.make().delete(ALICE, record.media_id)
    assert world.everything() == (sorted([record.s3_key, record.variants[0].key]), [], [])
    assert world.published.events == []
