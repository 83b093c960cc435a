"""One contract for every RecordStore/IdempotencyStore: SQLite (a file) and DynamoDB (moto server).

Records: create_many is all-or-nothing and never overwrites; get raises MediaNotFound; list is
newest first, paged by an opaque cursor, and scoped to one tenant and project; delete is
idempotent. Idempotency: claim/save/release as gateway/media/records/__init__.py describes.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from gateway.errors import (
    Conflict,
    IdempotencyInProgress,
    IllegalTransition,
    InvalidCursor,
    MediaNotFound,
    RecordChanged,
    RecordExists,
    RecordStoreError,
)
from gateway.media.lifecycle import TRANSITIONS, VISIBLE, Status
from gateway.media.records import (
    DirectUpload,
    IdempotentAnswer,
    MediaRecord,
    SavedResponse,
    Sha256State,
    TusUpload,
)
from gateway.media.records.dynamodb import DynamoRecordStore, make_dynamodb_client
from gateway.media.records.sqlite import SqliteRecordStore

from conftest import make_settings
from support import record_ids, unique

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def dynamodb_client(moto_url, tmp_path_factory):
    """One client (the gateway's own factory) for the module; each test gets its own table."""
    settings = make_settings(
        tmp_path_factory.mktemp("ddb"), backend="s3+dynamodb", moto_url=moto_url
    )
    return make_dynamodb_client(settings)


@pytest.fixture(params=["sqlite", "dynamodb"])
def records(request, tmp_path):
    if request.param == "sqlite":
        store = SqliteRecordStore(str(tmp_path / "records.db"))
    else:
        client = request.getfixturevalue("dynamodb_client")
        store = DynamoRecordStore(client, table=unique("contract"))
    store.create_schema()
    store.check()
    return store


def record(
    *,
    tenant: str = "t1",
    project_id: str = "p1",
    created_at: str = "2026-01-01T00:00:00.000000+00:00",
    media_id: str | None = None,
    **extra,
) -> MediaRecord:
    media_id = media_id or uuid.uuid4().hex
    prefix = f"{tenant}/" if tenant else ""
    values = {
        "media_id": media_id,
        "project_id": project_id,
        "tenant": tenant,
        "owner": "alice",
        "original_name": "cat.png",
        "file_type": "image",
        "mime_type": "image/png",
        "s3_key": f"{prefix}projects/{project_id}/media/{media_id}.png",
        "size": 1234,
        "sha256": "ab" * 32,
        "created_at": created_at,
        "metadata": {"caption": "a cat"},
    }
    values.update(extra)
    return MediaRecord(**values)


def stamp(i: int) -> str:
    return f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000000+00:00"


def all_pages(records, *, tenant: str, project_id: str, limit: int) -> list[list[MediaRecord]]:
    pages, cursor = [], None
    for _ in range(100):
        page = records.list_media(tenant=tenant, project_id=project_id, cursor=cursor, limit=limit)
        assert len(page.items) <= limit
        pages.append(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("paging never ended")


# -- records --------------------------------------------------------------------------------------
def test_create_then_get_round_trips(records):
    r = record()
    records.create_many([r])
    assert records.get(r.media_id) == r


@pytest.mark.parametrize("state", list(Sha256State))
def test_the_sha256_state_round_trips(records, state):
    sha256 = "" if state is Sha256State.PENDING else "cd" * 32
    r = record(sha256=sha256, sha256_state=state)
    records.create_many([r])
    assert records.get(r.media_id) == r


def test_a_pending_sha256_is_filled_by_an_update(records):
    r = record(sha256="", sha256_state=Sha256State.PENDING)
    records.create_many([r])
    hashed = r.evolve(sha256="cd" * 32, sha256_state=Sha256State.COMPUTED)
    written = records.update(hashed, expected=r)
    assert written == hashed.evolve(version=1) == records.get(r.media_id)


def test_get_missing_raises_record_not_found(records):
    with pytest.raises(MediaNotFound) as info:
        records.get(uuid.uuid4().hex)
    assert info.value.status == 404 and info.value.code == "media_not_found"


def test_create_never_overwrites(records):
    first = record()
    records.create_many([first])
    with pytest.raises(RecordExists):
        records.create_many(
            [
                record(
                    media_id=first.media_id,
                    original_name="other.png",
                    s3_key="projects/p1/media/other.png",
                )
            ]
        )
    assert records.get(first.media_id) == first


def test_create_many_is_all_or_nothing(records):
    existing = record()
    records.create_many([existing])
    fresh = [record(), record()]
    clash = record(media_id=existing.media_id, s3_key="projects/p1/media/clash.png")
    with pytest.raises(RecordExists):
        records.create_many([fresh[0], clash, fresh[1]])
    for r in fresh:
        with pytest.raises(MediaNotFound):
            records.get(r.media_id)
    assert records.get(existing.media_id) == existing
    assert sorted(record_ids(records)) == sorted(_ids(records, [existing]))


def _ids(records, rs: list[MediaRecord]) -> list[str]:
    return [r.media_id for r in rs]


def test_create_many_inserts_a_batch(records):
    batch = [record(created_at=stamp(1)) for _ in range(5)]
    records.create_many(batch)
    for r in batch:
        assert records.get(r.media_id) == r


def test_create_many_replacing_swaps_records_in_one_write_or_not_at_all(records):
    """What a tus final does with its partials: the new record in, the replaced ones out,
    each only at the version read; the usage counters follow in the same write."""
    pending = TusUpload(expires_at="2026-01-02T00:00:00+00:00", length=100, part_size=8 << 20)
    parts = [record(status=Status.PENDING, size=100, file_type="other", upload=pending)
             for _ in range(2)]  # fmt: skip
    records.create_many(parts)
    moved = records.update(parts[1].evolve(size=100), expected=parts[1])
    assert moved is not None and moved.version == 1
    joined = record(size=200)
    with pytest.raises(RecordChanged):
        records.create_many([joined], replacing=[parts[0], parts[1]])  # [1] is at version 1
    assert sorted(record_ids(records)) == sorted(p.media_id for p in parts)
    with pytest.raises(MediaNotFound):
        records.get(joined.media_id)
    records.create_many([joined], replacing=[parts[0], moved])
    assert record_ids(records) == [joined.media_id]
    usage = {(u.file_type, u.status): (u.files, u.bytes)
             for u in records.usage(tenant="t1", project_id="p1") if u.files}  # fmt: skip
    assert usage == {("image", Status.STORED): (1, 200)}


def test_list_is_newest_first_and_pages_with_a_cursor(records):
    # 7 singles and a batch of 3 sharing one created_at (as one request's files do).
    mine = [record(created_at=stamp(i)) for i in range(7)]
    for r in mine:
        records.create_many([r])
    batch = [record(created_at=stamp(3)) for _ in range(3)]
    records.create_many(batch)
    mine += batch
    # Neighbours that must never show up: other tenant, other project, no tenant.
    records.create_many([record(tenant="t2", created_at=stamp(i)) for i in range(3)])
    records.create_many([record(project_id="p2", created_at=stamp(i)) for i in range(3)])
    records.create_many([record(tenant="", created_at=stamp(i)) for i in range(3)])

    expected = sorted(mine, key=lambda r: (r.created_at, r.media_id), reverse=True)
    for limit in (1, 3, 4, 10, 25):
        pages = all_pages(records, tenant="t1", project_id="p1", limit=limit)
        flat = [r for page in pages for r in page]
        assert flat == expected, f"limit={limit}"
        assert all(pages[:-1]), f"an empty page before the end (limit={limit})"
    first = records.list_media(tenant="t1", project_id="p1", cursor=None, limit=4)
    assert first.next_cursor is not None and first.items == expected[:4]


def test_list_is_scoped_to_tenant_and_project(records):
    a = record(tenant="t1", project_id="p1")
    b = record(tenant="t2", project_id="p1")
    c = record(tenant="t1", project_id="p2")
    d = record(tenant="", project_id="p1")
    records.create_many([a, b, c, d])
    assert records.list_media(tenant="t1", project_id="p1", cursor=None, limit=10).items == [a]
    assert records.list_media(tenant="t2", project_id="p1", cursor=None, limit=10).items == [b]
    assert records.list_media(tenant="t1", project_id="p2", cursor=None, limit=10).items == [c]
    assert records.list_media(tenant="", project_id="p1", cursor=None, limit=10).items == [d]
    assert records.list_media(tenant="t3", project_id="p1", cursor=None, limit=10).items == []


def test_a_cursor_from_one_scope_shows_nothing_of_another(records):
    mine = [record(tenant="t1", created_at=stamp(i)) for i in range(4)]
    theirs = [record(tenant="t2", created_at=stamp(i)) for i in range(4)]
    records.create_many(mine)
    records.create_many(theirs)
    cursor = records.list_media(tenant="t1", project_id="p1", cursor=None, limit=2).next_cursor
    assert cursor is not None
    seen = records.list_media(tenant="t2", project_id="p1", cursor=cursor, limit=10).items
    assert not {r.media_id for r in seen} & {r.media_id for r in mine}


def test_list_of_an_empty_project(records):
    page = records.list_media(tenant="t1", project_id="nothing-here", cursor=None, limit=5)
    assert page.items == [] and page.next_cursor is None


def test_a_bad_cursor_is_a_bad_request(records):
    for cursor in ("not-a-cursor!", "NQ", "bnVsbA", "WyJhIl0", "WzEsMl0", "é"):
        with pytest.raises(InvalidCursor) as info:
            records.list_media(tenant="t1", project_id="p1", cursor=cursor, limit=5)
        assert (info.value.status, info.value.code) == (400, "invalid_cursor")


def test_delete_is_idempotent(records):
    r, other = record(), record()
    records.create_many([r, other])
    records.delete(r.media_id)
    with pytest.raises(MediaNotFound):
        records.get(r.media_id)
    records.delete(r.media_id)
    records.delete(uuid.uuid4().hex)
    assert records.get(other.media_id) == other
    assert records.list_media(tenant="t1", project_id="p1", cursor=None, limit=10).items == [other]


def test_a_deleted_id_can_be_created_again(records):
    r = record()
    records.create_many([r])
    records.delete(r.media_id)
    records.create_many([r])
    assert records.get(r.media_id) == r


# -- idempotency ----------------------------------------------------------------------------------
T0 = 1_800_000_000.0
LOCK, TTL = 60.0, 3600.0
ANSWER = SavedResponse(201, {"success": True, "mediaId": "abc", "files": [{"size": 3}]}, "f" * 64)


def save(
    records,
    scope: str,
    key: str,
    response: SavedResponse,
    *,
    now: float,
    ttl: float,
    with_records=(),
):
    """Complete a claim the only way the gateway does: with the records it answers about."""
    records.create_many(
        list(with_records), answer=IdempotentAnswer(scope, key, response, expires_at=now + ttl)
    )


def claim(
    records,
    key: str = "k1",
    *,
    at: float,
    scope: str = "t1#alice",
    lock: float = LOCK,
    ttl: float = TTL,
):
    return records.claim(scope, key, now=at, lock_timeout=lock, ttl=ttl)


def test_first_claim_is_free_second_conflicts_while_running(records):
    assert claim(records, at=T0) is None
    with pytest.raises(IdempotencyInProgress) as info:
        claim(records, at=T0 + 5)
    assert info.value.status == 409 and info.value.code == "idempotency_in_progress"
    with pytest.raises(Conflict):
        claim(records, at=T0 + LOCK - 1)  # still fresh


def test_saved_answer_is_replayed(records):
    assert claim(records, at=T0) is None
    save(records, "t1#alice", "k1", ANSWER, now=T0 + 2, ttl=TTL)
    assert claim(records, at=T0 + 3) == ANSWER
    # A saved answer is not "abandoned": it is replayed long after the lock timeout too.
    assert claim(records, at=T0 + LOCK * 10) == ANSWER
    # release() only frees running claims, never a saved answer.
    records.release("t1#alice", "k1")
    assert claim(records, at=T0 + LOCK * 10 + 1) == ANSWER


def test_release_makes_the_key_claimable_again(records):
    assert claim(records, at=T0) is None
    records.release("t1#alice", "k1")
    assert claim(records, at=T0 + 1) is None
    with pytest.raises(Conflict):
        claim(records, at=T0 + 2)


def test_release_of_an_unknown_key_is_harmless(records):
    records.release("t1#alice", "never-claimed")
    assert claim(records, "never-claimed", at=T0) is None


def test_an_abandoned_claim_can_be_taken_over(records):
    assert claim(records, at=T0) is None  # its request died without release
    assert claim(records, at=T0 + LOCK + 5) is None  # taken over
    with pytest.raises(Conflict):  # and the new claim is fresh again
        claim(records, at=T0 + LOCK + 6)


def test_an_expired_claim_can_be_taken(records):
    assert claim(records, at=T0, lock=3600, ttl=10) is None
    with pytest.raises(Conflict):
        claim(records, at=T0 + 5, lock=3600, ttl=10)
    assert claim(records, at=T0 + 20, lock=3600, ttl=10) is None


def test_an_expired_answer_is_not_replayed(records):
    assert claim(records, at=T0, ttl=10) is None
    save(records, "t1#alice", "k1", ANSWER, now=T0 + 1, ttl=10)
    assert claim(records, at=T0 + 5, ttl=10) == ANSWER
    assert claim(records, at=T0 + 30, ttl=10) is None


def test_keys_are_scoped(records):
    assert claim(records, at=T0, scope="t1#alice") is None
    assert claim(records, at=T0, scope="t1#bob") is None
    assert claim(records, at=T0, scope="t2#alice") is None
    assert claim(records, "k2", at=T0, scope="t1#alice") is None
    save(records, "t1#alice", "k1", ANSWER, now=T0, ttl=TTL)
    with pytest.raises(Conflict):
        claim(records, at=T0 + 1, scope="t1#bob")


def test_idempotency_entries_are_not_media(records):
    assert claim(records, at=T0) is None
    save(records, "t1#alice", "k1", ANSWER, now=T0, ttl=TTL)
    assert record_ids(records) == []
    assert records.list_media(tenant="t1", project_id="p1", cursor=None, limit=10).items == []


# -- SQLite under threads -------------------------------------------------------------------------
def test_sqlite_from_many_threads(tmp_path):
    store = SqliteRecordStore(str(tmp_path / "threads.db"))
    store.create_schema()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(20):
                batch = [record(project_id=f"p{n}", created_at=stamp(i)) for _ in range(2)]
                store.create_many(batch)
                assert store.get(batch[0].media_id) == batch[0]
                store.list_media(tenant="t1", project_id=f"p{n}", cursor=None, limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(record_ids(store)) == 8 * 20 * 2
    for n in range(8):
        flat = [
            r for page in all_pages(store, tenant="t1", project_id=f"p{n}", limit=7) for r in page
        ]
        assert len(flat) == 40


def test_sqlite_concurrent_claims_have_one_winner(tmp_path):
    store = SqliteRecordStore(str(tmp_path / "claims.db"))
    store.create_schema()
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        try:
            result = store.claim("t1#alice", "race", now=T0, lock_timeout=LOCK, ttl=TTL)
            outcome = "won" if result is None else "replayed"
        except Conflict:
            outcome = "conflict"
        except RecordStoreError as exc:
            outcome = f"error: {exc}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]


def test_idempotency_scopes_cannot_collide_through_separators(records):
    """(scope "t1#a", key "b#k") and (scope "t1#a#b", key "k") are different callers' keys."""
    assert claim(records, "b#k", at=T0, scope="t1#a") is None
    save(records, "t1#a", "b#k", ANSWER, now=T0, ttl=TTL)
    assert claim(records, "k", at=T0 + 1, scope="t1#a#b") is None  # not the other's answer


def _pending(**extra) -> MediaRecord:
    upload = DirectUpload(method="put", expires_at="2026-01-01T00:00:00+00:00")
    return record(status=Status.PENDING, upload=upload, **extra)


def test_update_is_a_compare_and_set_on_the_version(records):
    pending = _pending()
    records.create_many([pending])
    assert records.expired_pending(now="2026-01-02T00:00:00+00:00", limit=10) == [pending]
    assert records.expired_pending(now="2025-12-31T00:00:00+00:00", limit=10) == []
    listed = records.list_media(
        tenant=pending.tenant, project_id=pending.project_id, cursor=None, limit=10
    )
    assert listed.items == []  # pending media are not listed
    stored = records.update(pending.evolve(status=Status.STORED), expected=pending)
    assert stored == pending.evolve(status=Status.STORED, version=1)
    # A second writer that read the same version loses, whatever it wanted.
    assert records.update(pending.evolve(status=Status.ABORTED), expected=pending) is None
    assert records.get(pending.media_id) == stored
    assert records.expired_pending(now="2026-01-02T00:00:00+00:00", limit=10) == []
    listed = records.list_media(
        tenant=pending.tenant, project_id=pending.project_id, cursor=None, limit=10
    )
    assert listed.items == [stored]
    ready = records.update(stored.evolve(status=Status.PROCESSING), expected=stored)
    assert ready is not None and ready.version == 2
    assert records.update(stored.evolve(status=Status.READY), expected=stored) is None


@pytest.mark.parametrize("current", list(Status))
def test_update_enforces_the_transition_table(records, current):
    start = record(
        status=current, upload=DirectUpload(method="put", expires_at="2026-01-01T00:00:00+00:00")
    )
    records.create_many([start])
    for target in Status:
        if target is current:
            continue
        if target in TRANSITIONS[current]:
            continue
        with pytest.raises(IllegalTransition) as info:
            records.update(start.evolve(status=target), expected=start)
        assert (info.value.status, info.value.code) == (409, "illegal_transition")
    assert records.get(start.media_id) == start
    for target in TRANSITIONS[current]:
        moved = records.update(start.evolve(status=target), expected=start)
        assert moved is not None and moved.status is target
        break


def test_update_keeps_fields_and_may_keep_the_status(records):
    pending = _pending()
    records.create_many([pending])
    changed = records.update(pending.evolve(reason="halfway", size=99), expected=pending)
    assert changed == pending.evolve(reason="halfway", size=99, version=1)
    assert records.get(pending.media_id) == changed


def test_every_visible_status_is_listed_and_filterable(records):
    rows = {
        status: record(status=status, created_at=stamp(i))
        for i, status in enumerate(Status)
        if status is not Status.PENDING
    }
    records.create_many(list(rows.values()))
    listed = records.list_media(tenant="t1", project_id="p1", cursor=None, limit=50).items
    assert {r.status for r in listed} == set(VISIBLE)
    for status in VISIBLE:
        page = records.list_media(
            tenant="t1", project_id="p1", cursor=None, limit=50, status=status
        )
        assert page.items == [rows[status]] and page.next_cursor is None


def test_a_status_filter_pages_through_sparse_matches(records):
    ready = [record(status=Status.READY, created_at=stamp(i * 3)) for i in range(5)]
    others = [record(status=Status.STORED, created_at=stamp(i * 3 + 1)) for i in range(10)]
    records.create_many(ready + others)
    pages = []
    cursor = None
    while True:
        page = records.list_media(
            tenant="t1", project_id="p1", cursor=cursor, limit=2, status=Status.READY
        )
        pages.append([r.media_id for r in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [m for p in pages for m in p] == [r.media_id for r in reversed(ready)]
    assert all(len(p) == 2 for p in pages[:-1])


def test_count_pending_counts_one_callers_pending_uploads(records):
    mine = [_pending() for _ in range(3)]
    records.create_many([*mine, _pending(owner="bob"), _pending(tenant="t2"), record()])
    assert records.count_pending(tenant="t1", owner="alice", at_most=10) == 3
    assert records.count_pending(tenant="t1", owner="alice", at_most=1) == 2  # stops past it
    assert records.count_pending(tenant="t1", owner="bob", at_most=10) == 1
    assert records.count_pending(tenant="t2", owner="alice", at_most=10) == 1
    records.update(mine[0].evolve(status=Status.ABORTED), expected=mine[0])
    assert records.count_pending(tenant="t1", owner="alice", at_most=10) == 2


def test_the_answer_is_saved_with_its_records_or_not_at_all(records):
    existing = record()
    records.create_many([existing])
    assert claim(records, at=T0) is None
    fresh = record()
    with pytest.raises(RecordExists):
        save(records, "t1#alice", "k1", ANSWER, now=T0, ttl=TTL, with_records=[fresh, existing])
    with pytest.raises(MediaNotFound):
        records.get(fresh.media_id)
    with pytest.raises(IdempotencyInProgress):  # still a running claim: no answer was saved
        claim(records, at=T0 + 1)
    save(records, "t1#alice", "k1", ANSWER, now=T0, ttl=TTL, with_records=[fresh])
    assert records.get(fresh.media_id) == fresh
    assert claim(records, at=T0 + 2) == ANSWER


def test_stalled_finds_old_stored_media_only(records):
    old = [record(created_at=stamp(i)) for i in range(3)]
    newer = record(created_at=stamp(50))
    processing = record(created_at=stamp(1), status=Status.PROCESSING)
    records.create_many([*old, newer, processing, _pending()])
    found = records.stalled(created_before=stamp(10), limit=10)
    assert sorted(r.media_id for r in found) == sorted(r.media_id for r in old)
    assert len(records.stalled(created_before=stamp(10), limit=2)) == 2
    moved = records.update(old[0].evolve(status=Status.PROCESSING), expected=old[0])
    assert moved is not None
    assert old[0].media_id not in {
        r.media_id for r in records.stalled(created_before=stamp(10), limit=10)
    }


def test_processing_results_round_trip(records):
    from gateway.media.records import VariantInfo

    r = record(
        quarantined=True,
        stage="scan",
        properties={"width": 4, "gpsFound": False},
        variants=[VariantInfo("thumb-320", "k/thumb-320.webp", "image/webp", 320, 240, 99)],
    )
    records.create_many([r])
    assert records.get(r.media_id) == r


# -- usage counters ------------------------------------------------------------------------------------
def usage_of(records, tenant="t1", project_id="p1") -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (c.file_type, c.status.value): (c.files, c.bytes)
        for c in records.usage(tenant=tenant, project_id=project_id)
    }


def test_usage_counts_files_and_bytes_by_type_and_status_per_project(records):
    records.create_many(
        [record(size=100), record(size=250), record(file_type="video", size=5000),
         record(project_id="p2", size=7), record(tenant="t2", size=9)]
    )  # fmt: skip
    assert usage_of(records) == {("image", "stored"): (2, 350), ("video", "stored"): (1, 5000)}
    assert usage_of(records, project_id="p2") == {("image", "stored"): (1, 7)}
    assert usage_of(records, tenant="t2") == {("image", "stored"): (1, 9)}
    assert usage_of(records, project_id="empty") == {}


def test_usage_follows_every_update_and_delete(records):
    pending = _pending(size=1000)
    stored = record(size=40)
    records.create_many([pending, stored])
    assert usage_of(records) == {("image", "pending"): (1, 1000), ("image", "stored"): (1, 40)}
    done = records.update(pending.evolve(status=Status.STORED, size=900), expected=pending)
    assert usage_of(records) == {("image", "stored"): (2, 940)}
    leased = records.update(done.evolve(stage="scan"), expected=done)  # no count changes
    assert usage_of(records) == {("image", "stored"): (2, 940)}
    assert records.update(done.evolve(status=Status.PROCESSING), expected=done) is None  # stale
    assert usage_of(records) == {("image", "stored"): (2, 940)}
    records.update(leased.evolve(status=Status.PROCESSING), expected=leased)
    assert usage_of(records) == {("image", "processing"): (1, 900), ("image", "stored"): (1, 40)}
    records.delete(stored.media_id)
    records.delete(stored.media_id)  # idempotent: counted once
    assert usage_of(records) == {("image", "processing"): (1, 900)}


def test_a_refused_create_counts_nothing(records):
    first = record(size=10)
    records.create_many([first])
    with pytest.raises(RecordExists):
        records.create_many([record(size=20), record(media_id=first.media_id, size=30)])
    assert usage_of(records) == {("image", "stored"): (1, 10)}


def test_concurrent_writes_keep_exact_counts(limited):
    records = limited(serial=True)
    made = [record(size=n + 1) for n in range(24)]

    def create(chunk):
        for r in chunk:
            records.create_many([r])

    threads = [threading.Thread(target=create, args=(made[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert usage_of(records) == {("image", "stored"): (24, sum(range(1, 25)))}
    deleters = [threading.Thread(target=lambda c=made[i::3]: [records.delete(r.media_id) for r in c])
                for i in range(3)]  # fmt: skip
    for t in deleters:
        t.start()
    for t in deleters:
        t.join()
    assert usage_of(records) == {}


def test_sqlite_counts_what_an_older_store_already_holds(tmp_path):
    """A store made before the counters existed: its first open counts its records once."""
    import sqlite3

    from gateway.media.records import sqlite as sqlite_store

    path = str(tmp_path / "old.db")
    old = SqliteRecordStore(path)
    old.create_schema()
    old.create_many([record(size=5), _pending(size=6)])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE usage")
    conn.commit()
    conn.close()
    again = SqliteRecordStore(path)
    again.create_schema()
    assert usage_of(again) == {("image", "pending"): (1, 6), ("image", "stored"): (1, 5)}
    SqliteRecordStore(path).create_schema()  # not counted twice
    assert usage_of(SqliteRecordStore(path)) == usage_of(again)
    assert "usage" in sqlite_store.USAGE_SCHEMA


def test_dynamodb_retries_a_transaction_that_conflicted(monkeypatch):
    """moto never makes two transactions conflict, so this one uses a stand-in client that
    answers TransactionCanceledException (TransactionConflict) as DynamoDB does."""
    from botocore.exceptions import ClientError

    from gateway.media.records import dynamodb

    monkeypatch.setattr(dynamodb.time, "sleep", lambda s: None)

    class Client:
        def __init__(self, conflicts: int, reason: str = "TransactionConflict") -> None:
            self.conflicts, self.reason, self.calls = conflicts, reason, 0

        def transact_write_items(self, **kwargs):
            self.calls += 1
            if self.calls <= self.conflicts:
                raise ClientError(
                    {"Error": {"Code": "TransactionCanceledException", "Message": "x"},
                     "CancellationReasons": [{"Code": "None"}, {"Code": self.reason}]},
                    "TransactWriteItems",
                )  # fmt: skip

    client = Client(conflicts=dynamodb.TRANSACTION_ATTEMPTS - 1)
    store = DynamoRecordStore(client, table="t")
    assert store._transact([{}]) is None  # committed
    assert client.calls == dynamodb.TRANSACTION_ATTEMPTS
    always = Client(conflicts=99)
    with pytest.raises(RecordStoreError):
        DynamoRecordStore(always, table="t")._transact([{}])
    assert always.calls == dynamodb.TRANSACTION_ATTEMPTS
    condition = Client(conflicts=1, reason="ConditionalCheckFailed")
    assert DynamoRecordStore(condition, table="t")._transact([{}]) == [
        "None", "ConditionalCheckFailed"]  # fmt: skip
    assert condition.calls == 1


# -- quotas --------------------------------------------------------------------------------------------
from gateway.errors import QuotaExceeded  # noqa: E402
from gateway.media.records.quota import QuotaLimits  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def serial_dynamodb_client(serial_moto_url, tmp_path_factory):
    settings = make_settings(
        tmp_path_factory.mktemp("ddb"), backend="s3+dynamodb", moto_url=serial_moto_url
    )
    return make_dynamodb_client(settings)


@pytest.fixture(params=["sqlite", "dynamodb"])
def limited(request, tmp_path):
    """A store factory: ``limited(**limits)`` (each call a new store, table or file); with
    ``serial=True`` a DynamoDB table is on the serialized moto (tests/serial_moto.py)."""

    def make(serial=False, **limits):
        if request.param == "sqlite":
            store = SqliteRecordStore(str(tmp_path / f"{uuid.uuid4().hex}.db"),
                                      limits=QuotaLimits(**limits))  # fmt: skip
        else:
            client = request.getfixturevalue(
                "serial_dynamodb_client" if serial else "dynamodb_client"
            )
            store = DynamoRecordStore(client, table=unique("quota"), limits=QuotaLimits(**limits))
        store.create_schema()
        return store

    return make


def test_a_project_may_hold_exactly_its_files_and_bytes(limited):
    store = limited(project_files=3, project_bytes=1000)
    store.create_many([record(size=400), record(size=400)])
    store.create_many([record(size=200)])  # 3 files, 1000 bytes: exactly at both limits
    for extra in (record(size=0), record(project_id="p1", size=1)):
        with pytest.raises(QuotaExceeded) as info:
            store.create_many([extra])
        assert (info.value.status, info.value.code) == (413, "quota_exceeded")
        with pytest.raises(MediaNotFound):
            store.get(extra.media_id)
    assert usage_of(store) == {("image", "stored"): (3, 1000)}
    store.create_many([record(project_id="p2", size=1000)])  # another project: its own quota


def test_one_write_over_the_limit_alone_is_refused(limited):
    store = limited(project_bytes=100)
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=101)])
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=60), record(size=60)])  # together over it: none stored
    assert usage_of(store) == {}
    store.create_many([record(size=100)])


def test_a_tenant_quota_covers_all_its_projects(limited):
    store = limited(tenant_files=2)
    store.create_many([record(project_id="p1"), record(project_id="p2")])
    with pytest.raises(QuotaExceeded):
        store.create_many([record(project_id="p3")])
    store.create_many([record(tenant="t2", project_id="p3")])  # another tenant


def test_pending_uploads_hold_their_promise_until_they_end(limited):
    store = limited(project_bytes=1000)
    pending = _pending(size=800)
    store.create_many([pending])
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=300)])
    aborted = store.update(pending.evolve(status=Status.ABORTED), expected=pending)
    assert aborted is not None
    store.create_many([record(size=300)])  # the abort released the promise
    kept = record(size=700)
    store.create_many([kept])
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=1)])
    store.delete(kept.media_id)
    store.create_many([record(size=700)])  # the delete released it


def test_a_record_that_grows_past_the_limit_is_refused_and_unchanged(limited):
    store = limited(project_bytes=1000)
    pending = _pending(size=0)
    store.create_many([pending])
    with pytest.raises(QuotaExceeded):
        store.update(pending.evolve(status=Status.STORED, size=1001), expected=pending)
    assert store.get(pending.media_id) == pending
    assert store.update(pending.evolve(status=Status.STORED, size=1000), expected=pending)


def test_reservations_hold_space_until_their_records_replace_them(limited):
    store = limited(project_bytes=1000, project_files=2)
    store.reserve("r1", tenant="t1", project_id="p1", files=1, bytes=900, expires_at=2e9)
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=200)])
    with pytest.raises(QuotaExceeded):
        store.reserve("r2", tenant="t1", project_id="p1", files=1, bytes=101, expires_at=2e9)
    store.reserve("r1", tenant="t1", project_id="p1", files=0, bytes=100, expires_at=2e9)
    with pytest.raises(QuotaExceeded):  # r1 now holds all 1000 bytes
        store.reserve("r1", tenant="t1", project_id="p1", files=0, bytes=1, expires_at=2e9)
    # The upload ends smaller than its reservation: the records replace it, the rest is free.
    store.create_many([record(size=600)], reservation="r1")
    store.create_many([record(size=400)])
    assert usage_of(store) == {("image", "stored"): (2, 1000)}
    with pytest.raises(QuotaExceeded):
        store.create_many([record(size=0)])


def test_an_ended_or_expired_reservation_frees_its_space(limited):
    store = limited(project_files=1)
    store.reserve("gone", tenant="t1", project_id="p1", files=1, bytes=0, expires_at=2e9)
    with pytest.raises(QuotaExceeded):
        store.create_many([record()])
    store.end_reservation("gone")
    store.end_reservation("gone")  # idempotent
    store.reserve("dead", tenant="t1", project_id="p1", files=1, bytes=0, expires_at=5.0)
    assert store.end_expired_reservations(now=4.0, limit=10) == 0
    assert store.end_expired_reservations(now=6.0, limit=10) == 1
    store.create_many([record()])


def test_concurrent_creates_never_overshoot_a_quota(limited):
    store = limited(serial=True, project_files=5, project_bytes=5 * 100)
    outcomes: list[str] = []

    def one():
        try:
            store.create_many([record(size=100)])
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 11 + ["stored"] * 5
    assert usage_of(store) == {("image", "stored"): (5, 500)}


def test_racing_claims_of_one_ticket_have_one_winner_whose_answer_is_the_used_mark(limited):
    """Upload tickets (gateway/uploads/tickets.py) are single-use through this: of the posts that
    race for one ticket's key, exactly one claims it (a conditional put; an insert in one
    transaction), the others conflict; the answer saved with its records then marks it used for
    every later claim, past the lock timeout, until the answer expires."""
    store = limited(serial=True)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def work() -> None:
        start.wait()
        try:
            result = store.claim("ticket:acme", "jti-1", now=T0, lock_timeout=LOCK, ttl=TTL)
            outcome = "won" if result is None else "replayed"
        except IdempotencyInProgress:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    stored = record(tenant="acme")
    save(store, "ticket:acme", "jti-1", ANSWER, now=T0, ttl=TTL, with_records=[stored])
    for at in (T0 + 1, T0 + LOCK + 1, T0 + TTL - 1):
        assert claim(store, "jti-1", at=at, scope="ticket:acme") == ANSWER
    assert claim(store, "jti-1", at=T0 + 1, scope="ticket:globex") is None  # another tenant's
    assert claim(store, "jti-1", at=T0 + TTL + 1, scope="ticket:acme") is None  # expired
