"""One contract for every ObjectStore backend: a local directory, and S3 on two implementations
over HTTP: a moto server and Ceph's radosgw (tests/ceph_harness.py).

The contract (gateway/storage/__init__.py): nothing written through a writer is visible under
its key until commit(); commit makes the exact bytes visible; abort() leaves nothing behind, no
object and no pending upload; a writer is never committed implicitly.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import threading
import uuid

import pytest

from gateway.errors import StorageError
from gateway.storage import integrity
from gateway.storage.local import LocalObjectStore
from gateway.storage.s3 import S3ObjectStore, make_s3_client
from gateway.storage.s3_requests import S3Requests
from gateway.storage.staging import MemoryBudget, PartSpace, Staging

from conftest import make_settings
from support import MiB, mp4_bytes, png_bytes, read_object, unique

pytestmark = pytest.mark.timeout(60)

PART = 5 * MiB  # S3's minimum part size: the multipart path with the least bytes


def make_key(ext: str = ".png") -> str:
    return f"projects/p1/media/{uuid.uuid4().hex}{ext}"


@pytest.fixture(scope="module")
def s3_client(moto_url, tmp_path_factory):
    """The gateway's own S3 client factory, pointed at moto; one client for the module."""
    settings = make_settings(
        tmp_path_factory.mktemp("s3"), backend="s3", moto_url=moto_url, s3_max_attempts=2
    )
    return make_s3_client(settings)


@pytest.fixture(scope="module")
def ceph_client(ceph_url, tmp_path_factory):
    """The same, pointed at Ceph's S3."""
    settings = make_settings(
        tmp_path_factory.mktemp("ceph"), backend="ceph", ceph_url=ceph_url, s3_max_attempts=2
    )
    return make_s3_client(settings)


def s3_store_for(client, space=None) -> S3ObjectStore:
    from concurrent.futures import ThreadPoolExecutor

    bucket = unique("contract")
    s3 = S3ObjectStore(
        client,
        bucket=bucket,
        prefix="uploads",
        part_size=PART,
        parts_in_flight=2,
        endpoint_url=client.meta.endpoint_url,
        region="us-east-1",
        executor=ThreadPoolExecutor(8),
        requests=S3Requests(
            client,
            bucket=bucket,
            max_attempts=2,
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=8,
        ),
        space=space,
        integrity="md5",
    )
    s3.create_bucket()
    return s3


CLIENTS = {"s3": "s3_client", "s3-staged": "s3_client", "ceph": "ceph_client"}


@pytest.fixture(params=["local", "s3", "s3-staged", "ceph"])
def store(request, tmp_path):
    """``s3-staged``: every part counts as slow and waits in a staged file (storage/staging.py);
    after each test the staging directory must be empty again, whatever the test did."""
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "media")
        return
    staging = Staging(tmp_path / "staging", 1 << 40)
    ticks = itertools.count()  # a second passes between any two looks at the clock: all slow
    space = PartSpace(
        MemoryBudget(1 << 30), staging, fast_rate=1 << 20, clock=lambda: float(next(ticks))
    )
    s3 = s3_store_for(
        request.getfixturevalue(CLIENTS[request.param]),
        space if "staged" in request.param else None,
    )
    yield s3
    s3.executor.shutdown(wait=True)
    assert list(staging.files()) == []


@pytest.fixture(params=["s3", "ceph"])
def s3_store(request):
    """S3 only, for what only S3 has: parts, object metadata, tags."""
    s3 = s3_store_for(request.getfixturevalue(CLIENTS[request.param]))
    yield s3
    s3.executor.shutdown(wait=True)


def is_s3(store) -> bool:
    return isinstance(store, S3ObjectStore)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def visible_keys(store) -> list[str]:
    return sorted(o.key for o in store.objects())


def raw_pending(store) -> list:
    """Pending multipart uploads as S3 itself reports them (whole bucket, no prefix filter)."""
    if is_s3(store):
        return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return list(store.pending_uploads())


def raw_objects(store) -> list[str]:
    """Every object in the bucket / every file under the root, temporary files included."""
    if is_s3(store):
        listed = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
        return sorted(item["Key"] for item in listed)
    return sorted(
        p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
    )


def assert_empty(store) -> None:
    assert raw_objects(store) == []
    assert raw_pending(store) == []
    assert list(store.pending_uploads()) == []
    assert visible_keys(store) == []


def open_writer(store, key: str, **kw):
    return store.open_writer(
        key,
        content_type=kw.pop("content_type", "image/png"),
        metadata=kw.pop("metadata", {"media-id": "m1"}),
        **kw,
    )


# -- visibility and commit ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [30_000, 12 * MiB + 123], ids=["single-put", "multipart"])
def test_nothing_visible_before_commit_then_exact_bytes(store, size):
    key, data = make_key(), png_bytes(size)
    writer = open_writer(store, key)
    for i in range(0, len(data), 1 * MiB):
        writer.write(data[i : i + MiB])
        assert not store.exists(key)
    assert writer.bytes_written == len(data)
    assert visible_keys(store) == []

    stored = writer.commit(sha256=sha(data))
    assert stored.key == key and stored.size == len(data)
    assert store.exists(key)
    assert read_object(store, key) == data
    assert [(o.key, o.size) for o in store.objects()] == [(key, len(data))]
    if is_s3(store):  # keys are stored under the store's prefix, listed without it
        assert raw_objects(store) == [f"uploads/{key}"]
    assert raw_pending(store) == [] and list(store.pending_uploads()) == []


def test_s3_multipart_path_is_really_taken(s3_store):
    store = s3_store
    key, data = make_key(".mp4"), mp4_bytes(3 * PART + 10)
    writer = open_writer(store, key, content_type="video/mp4")
    writer.write(data[: PART + 1])  # one full part sent: a multipart upload exists now
    pending = raw_pending(store)
    assert [u["Key"] for u in pending] == [store.full_key(key)]
    assert not store.exists(key)
    writer.write(data[PART + 1 :])
    writer.commit(sha256=sha(data))
    head = store.client.head_object(Bucket=store.bucket, Key=store.full_key(key))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-4")  # 3 full parts and the tail
    assert raw_pending(store) == []


def test_s3_single_put_stores_headers_and_sha256_metadata(s3_store):
    store = s3_store
    key, data = make_key(), png_bytes(40_000)
    disposition = "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
    writer = open_writer(
        store, key, metadata={"media-id": "m1", "project-id": "p1"}, content_disposition=disposition
    )
    writer.write(data)
    buffer = writer._filler.current.buffer
    writer.commit(sha256=sha(data))
    head = store.client.head_object(Bucket=store.bucket, Key=store.full_key(key))
    assert head["ContentType"] == "image/png"
    assert head["ContentDisposition"] == disposition
    assert head["Metadata"] == {"media-id": "m1", "project-id": "p1", "sha256": sha(data)}
    assert raw_pending(store) == []
    assert store.buffers.take() is buffer  # back in the pool


def test_s3_single_put_that_fails_gives_its_buffer_back_and_stores_nothing(s3_store):
    store = s3_store
    key, data = make_key(), png_bytes(40_000)
    writer = open_writer(store, key)
    writer.write(data)
    buffer = writer._filler.current.buffer
    requests = store.requests
    store.requests = S3Requests(
        store.client,
        bucket=unique("missing"),
        max_attempts=1,
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=1,
    )
    try:
        with pytest.raises(StorageError):
            writer.commit(sha256=sha(data))
    finally:
        store.requests = requests
    assert store.buffers.take() is buffer
    assert not store.exists(key)


def test_s3_multipart_stores_headers_and_sha256_tag(s3_store):
    store = s3_store
    key, data = make_key(".mp4"), mp4_bytes(2 * PART + 77)
    disposition = "inline; filename=\"clip.mp4\"; filename*=UTF-8''clip.mp4"
    writer = open_writer(
        store,
        key,
        content_type="video/mp4",
        metadata={"media-id": "m2", "original-name": "clip.mp4"},
        content_disposition=disposition,
    )
    writer.write(data)
    writer.commit(sha256=sha(data))
    full = store.full_key(key)
    head = store.client.head_object(Bucket=store.bucket, Key=full)
    assert head["ContentType"] == "video/mp4"
    assert head["ContentDisposition"] == disposition
    assert head["Metadata"] == {"media-id": "m2", "original-name": "clip.mp4"}
    tags = store.client.get_object_tagging(Bucket=store.bucket, Key=full)["TagSet"]
    assert tags == [{"Key": "sha256", "Value": sha(data)}]
    assert raw_pending(store) == []


def test_s3_staged_parts_carry_content_md5_and_crc32c_of_their_bytes(s3_client, tmp_path):
    """A part staged on disk is sent with the integrity mode's checksums as a part from memory
    is (md5 mode: Content-MD5, computed as its bytes arrived, and the CRC32C), and the ETag
    check passes: the stored object is exact."""
    staging = Staging(tmp_path / "staging", 1 << 40)
    ticks = itertools.count()
    space = PartSpace(
        MemoryBudget(1 << 30), staging, fast_rate=1 << 20, clock=lambda: float(next(ticks))
    )
    store = s3_store_for(s3_client, space)
    sent = []
    upload_part = store.requests.upload_part

    def recorded(key, upload_id, number, body, headers):
        sent.append((number, type(body).__name__, dict(headers)))
        return upload_part(key, upload_id, number, body, headers)

    store.requests.upload_part = recorded
    key, data = make_key(".mp4"), mp4_bytes(2 * PART + 10)
    try:
        writer = open_writer(store, key, content_type="video/mp4")
        for i in range(0, len(data), 64 * 1024):
            writer.write(data[i : i + 64 * 1024])
        writer.commit(sha256=sha(data))
    finally:
        store.executor.shutdown(wait=True)
    parts = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
    # the first two from their files (the third, the 10-byte tail, from memory: the clock's
    # ticks made the second part's pace look fast)
    assert [(n, kind) for n, kind, _ in sent] == [(1, "FileBody"), (2, "FileBody"), (3, "bytes")]
    for (_, _, headers), part in zip(sent, parts, strict=True):
        assert headers == integrity.sums(part, "md5").headers
        assert set(headers) == {"Content-MD5", "x-amz-checksum-crc32c"}
    assert read_object(store, key) == data
    assert list(staging.files()) == []


class SlotChecked:
    """The S3 client, whose multipart calls record whether a client slot was free then."""

    CHECKED = (
        "create_multipart_upload",
        "complete_multipart_upload",
        "put_object_tagging",
        "abort_multipart_upload",
    )

    def __init__(self, client, slots) -> None:
        self._client = client
        self._slots = slots
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, name):
        call = getattr(self._client, name)
        if name not in self.CHECKED:
            return call

        def checked(**kwargs):
            free = self._slots.acquire(blocking=False)
            if free:
                self._slots.release()
            self.calls.append((name, free))
            return call(**kwargs)

        return checked


def test_s3_writers_call_the_client_holding_one_of_its_slots(s3_client):
    """Each multipart call a writer makes through the client holds one of the store's client
    slots (its pool's size; one here), so that many uploads starting or completing at once
    wait for a pooled connection instead of opening connections past the pool."""
    store = s3_store_for(s3_client)
    store.client_slots = slots = threading.BoundedSemaphore(1)
    store.client = checked = SlotChecked(s3_client, slots)
    try:
        data = mp4_bytes(PART + 10)
        writer = open_writer(store, make_key(".mp4"), content_type="video/mp4")
        writer.write(data)
        writer.commit(sha256=sha(data))
        aborted = open_writer(store, make_key(".mp4"), content_type="video/mp4")
        aborted.write(data)
        aborted.abort()
    finally:
        store.executor.shutdown(wait=True)
    assert checked.calls == [
        ("create_multipart_upload", False),
        ("complete_multipart_upload", False),
        ("put_object_tagging", False),
        ("create_multipart_upload", False),
        ("abort_multipart_upload", False),
    ]
    assert slots.acquire(blocking=False)  # every slot given back
    assert raw_pending(store) == []


# -- abort ----------------------------------------------------------------------------------------
def test_abort_before_any_part_leaves_nothing(store):
    key = make_key()
    writer = open_writer(store, key)
    writer.write(png_bytes(10_000))
    writer.abort()
    assert not store.exists(key)
    assert_empty(store)


def test_abort_after_several_parts_leaves_nothing(store):
    key = make_key(".mp4")
    writer = open_writer(store, key, content_type="video/mp4")
    writer.write(mp4_bytes(2 * PART + 4321))  # two parts sent (or in flight), a tail buffered
    if is_s3(store):
        assert len(raw_pending(store)) == 1
    writer.abort()
    assert not store.exists(key)
    assert_empty(store)


def test_abort_after_spill_leaves_nothing(store):
    key = make_key()
    writer = open_writer(store, key)
    writer.write(png_bytes(50_000))
    writer.spill()
    writer.abort()
    assert_empty(store)


def test_abort_is_idempotent(store):
    key = make_key()
    writer = open_writer(store, key)
    writer.write(png_bytes(PART + 10))
    writer.abort()
    writer.abort()
    assert_empty(store)


def test_abort_after_commit_keeps_the_object(store):
    key, data = make_key(), png_bytes(20_000)
    writer = open_writer(store, key)
    writer.write(data)
    writer.commit(sha256=sha(data))
    writer.abort()
    assert read_object(store, key) == data


def test_commit_twice_is_refused_or_harmless(store):
    key, data = make_key(), png_bytes(20_000)
    writer = open_writer(store, key)
    writer.write(data)
    writer.commit(sha256=sha(data))
    try:
        writer.commit(sha256=sha(data))
    except (StorageError, ValueError, OSError):
        pass
    assert read_object(store, key) == data
    assert raw_pending(store) == []


# -- spill ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [40_000, PART + 999], ids=["under-a-part", "over-a-part"])
def test_spill_then_commit(store, size):
    key, data = make_key(), png_bytes(size)
    writer = open_writer(store, key)
    writer.write(data)
    writer.spill()
    assert not store.exists(key)
    assert visible_keys(store) == []
    writer.commit(sha256=sha(data))
    assert read_object(store, key) == data
    assert raw_pending(store) == []
    if is_s3(store):  # spilled: went multipart, so the checksum travels as a tag
        tags = store.client.get_object_tagging(Bucket=store.bucket, Key=store.full_key(key))[
            "TagSet"
        ]
        assert tags == [{"Key": "sha256", "Value": sha(data)}]


def test_spill_of_nothing_then_commit(store):
    key, data = make_key(), png_bytes(1_000)
    writer = open_writer(store, key)
    writer.spill()
    writer.write(data)
    writer.commit(sha256=sha(data))
    assert read_object(store, key) == data
    assert raw_pending(store) == []


# -- delete ---------------------------------------------------------------------------------------
def test_delete_is_idempotent(store):
    key, data = make_key(), png_bytes(5_000)
    store.delete(make_key())  # never existed
    writer = open_writer(store, key)
    writer.write(data)
    writer.commit(sha256=sha(data))
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)
    assert visible_keys(store) == []


# -- listing --------------------------------------------------------------------------------------
def test_objects_lists_committed_objects_only(store):
    committed = {}
    for size in (1_000, 2_000, 3_000):
        key, data = make_key(), png_bytes(size)
        writer = open_writer(store, key)
        writer.write(data)
        writer.commit(sha256=sha(data))
        committed[key] = size
    in_progress = open_writer(store, make_key())
    in_progress.write(b"x" * 100)  # not listed
    aborted = open_writer(store, make_key())
    aborted.write(b"y" * 100)
    aborted.abort()
    listed = {o.key: o.size for o in store.objects()}
    assert listed == committed
    for info in store.objects():
        assert info.modified.tzinfo is not None
    in_progress.abort()


def test_pending_uploads_lists_and_aborts_an_upload_left_behind(store):
    """A killed worker: a writer that started a multipart upload, never committed or aborted."""
    key = make_key(".mp4")
    writer = open_writer(store, key, content_type="video/mp4")
    writer.write(mp4_bytes(PART + 100))
    writer.spill()  # every part has landed (durable) before the "kill"
    del writer
    gc.collect()

    pending = list(store.pending_uploads())
    assert len(pending) == 1
    upload = pending[0]
    # S3 reports the object's key; the local store names its temporary file beside it.
    assert upload.key == key or (
        upload.key.startswith("projects/p1/media/") and upload.key.endswith(key.rsplit("/", 1)[1])
    )
    assert upload.upload_id and upload.started.tzinfo is not None
    assert not store.exists(key) and visible_keys(store) == []

    store.abort_pending(upload)
    assert_empty(store)


def test_pending_uploads_of_an_in_progress_writer_are_listed(store):
    key = make_key()
    writer = open_writer(store, key)
    writer.write(png_bytes(PART + 1))
    writer.spill()
    assert len(list(store.pending_uploads())) == 1
    writer.abort()
    assert list(store.pending_uploads()) == []


# -- never an implicit commit ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [10_000, 2 * PART + 5], ids=["buffered", "parts-sent"])
def test_garbage_collection_never_commits(store, size):
    key = make_key()
    writer = open_writer(store, key)
    writer.write(png_bytes(size))
    if size > PART:
        writer.spill()
    del writer
    gc.collect()
    assert not store.exists(key)
    assert visible_keys(store) == []
    for upload in list(store.pending_uploads()):  # what a killed worker leaves: the sweeper's job
        store.abort_pending(upload)
    assert_empty(store)
