"""gateway.uploads.ingest on a recording fake store: sniff before any store call, the writer's name,
type, metadata and Content-Disposition (what S3 keeps; the local store ignores them), exact
bytes whatever the write sizes, checksum and emptiness, and the record draft."""

from __future__ import annotations

import hashlib

import pytest

from gateway import errors
from gateway.media.lifecycle import Status
from gateway.media.principal import Principal
from gateway.media.records import DirectUpload, MediaRecord, Sha256State, TusUpload
from gateway.uploads.ingest import (
    Destination,
    IncomingFile,
    checked_type,
    object_metadata,
    record_metadata,
    served_headers,
    with_type,
)
from gateway.uploads.sniff import UNTYPED, SniffedType

from support import iter_chunks, jpeg_bytes, png_bytes

MEDIA_ID = "0123456789abcdef0123456789abcdef"
ALLOWED = ("image/*", "video/*")


class FakeWriter:
    def __init__(self, key: str) -> None:
        self.key = key
        self.data = bytearray()
        self.writes: list[bytes] = []
        self.spills = 0
        self.committed: str | None = None
        self.aborts = 0

    @property
    def bytes_written(self) -> int:
        return len(self.data)

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self.data += data

    def spill(self) -> None:
        self.spills += 1

    def commit(self, *, sha256: str) -> None:
        self.committed = sha256

    def abort(self) -> None:
        self.aborts += 1


class FakeStore:
    def __init__(self) -> None:
        self.opened: list[dict] = []
        self.writers: list[FakeWriter] = []

    def open_writer(self, key, *, content_type, metadata, content_disposition=""):
        self.opened.append(
            {
                "key": key,
                "content_type": content_type,
                "metadata": metadata,
                "content_disposition": content_disposition,
            }
        )
        self.writers.append(FakeWriter(key))
        return self.writers[-1]


def incoming(
    store: FakeStore,
    *,
    tenant: str = "",
    subject: str = "alice",
    name: str = "cat.png",
    expected_sha256: str | None = None,
    allowed: tuple[str, ...] = ALLOWED,
) -> IncomingFile:
    return IncomingFile(
        store=store,
        destination=Destination(Principal(subject, tenant, None), "p1"),
        allowed_types=allowed,
        media_id=MEDIA_ID,
        original_name=name,
        expected_sha256=expected_sha256,
    )


# -- checked_type and metadata ------------------------------------------------------------------
def test_checked_type_returns_what_the_bytes_are():
    assert checked_type(png_bytes(100), ALLOWED, name="x") == SniffedType("image/png", ".png")


@pytest.mark.parametrize(
    "head, allowed, message",
    [
        (
            b"%PDF-1.7\n" + b"x" * 100,
            ALLOWED,
            "File 'doc.png' is application/pdf; allowed: image/*, video/*.",
        ),
        (
            b"\x00\x01 no known signature",
            ALLOWED,
            "File 'doc.png' is unrecognized content; allowed: image/*, video/*.",
        ),
        (b"just text", ALLOWED, "File 'doc.png' is text/plain; allowed: image/*, video/*."),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            ("image/*",),
            "File 'doc.png' is image/svg+xml; allowed: image/*.",
        ),
        (png_bytes(100), ("video/*",), "File 'doc.png' is image/png; allowed: video/*."),
    ],
)
def test_checked_type_names_the_file_its_type_and_the_allow_list(head, allowed, message):
    with pytest.raises(errors.UnsupportedType) as caught:
        checked_type(head, allowed, name="doc.png")
    assert caught.value.message == message
    assert (caught.value.status, caught.value.code) == (415, "unsupported_type")


def test_any_type_stores_unknown_bytes_as_octet_stream():
    unknown = b"\x00\x01 no known signature"
    assert checked_type(unknown, ("*/*",), name="x") == SniffedType(
        "application/octet-stream", ".bin"
    )
    assert checked_type(png_bytes(100), ("*/*",), name="x") == SniffedType("image/png", ".png")
    assert checked_type(b"text", ("*/*",), name="x") == SniffedType("text/plain", ".txt")


def test_object_metadata_names_and_ascii_quoting():
    assert object_metadata(
        media_id=MEDIA_ID, project_id="p1", owner="ann é/b", original_name="café 1/2.png"
    ) == {
        "media-id": MEDIA_ID,
        "project-id": "p1",
        "owner": "ann%20%C3%A9%2Fb",
        "original-name": "caf%C3%A9%201%2F2.png",
    }
    with_sha = object_metadata(
        media_id=MEDIA_ID, project_id="p1", owner="o", original_name="n", sha256="a" * 64
    )
    assert with_sha["sha256"] == "a" * 64 and len(with_sha) == 5


def test_record_metadata_is_the_object_metadata_of_the_records_fields():
    record = Destination(Principal("ann é/b", "", None), "p1").draft(
        media_id=MEDIA_ID,
        original_name="café 1/2.png",
        sniffed=SniffedType("image/png", ".png"),
        size=1,
        sha256="c" * 64,
        created_at="t",
        metadata={},
    )
    expected = object_metadata(
        media_id=MEDIA_ID, project_id="p1", owner="ann é/b", original_name="café 1/2.png"
    )
    assert record_metadata(record) == expected  # the record's own SHA-256 is not promised
    assert record_metadata(record, sha256="a" * 64) == {**expected, "sha256": "a" * 64}


# -- the destination -----------------------------------------------------------------------------
def test_the_key_carries_the_tenant_project_media_id_and_sniffed_extension():
    sniffed = SniffedType("image/jpeg", ".jpg")
    assert (
        Destination(Principal("a", "acme", None), "p1").key(MEDIA_ID, sniffed)
        == f"acme/projects/p1/media/{MEDIA_ID}.jpg"
    )
    assert (
        Destination(Principal("a", "", None), "p2").key(MEDIA_ID, sniffed)
        == f"projects/p2/media/{MEDIA_ID}.jpg"
    )


def test_a_draft_is_a_record_of_the_caller_in_its_tenant_and_project():
    destination = Destination(Principal("alice", "acme", None), "p1")
    metadata = {"caption": "c"}
    upload = DirectUpload(method="put", expires_at="2030-01-01T00:00:00+00:00")
    draft = destination.draft(
        media_id=MEDIA_ID,
        original_name="clip.mp4",
        sniffed=SniffedType("video/mp4", ".mp4"),
        size=42,
        sha256="b" * 64,
        created_at="2024-01-01T00:00:00.000000+00:00",
        metadata=metadata,
        status=Status.PENDING,
        upload=upload,
    )
    assert draft == MediaRecord(
        media_id=MEDIA_ID,
        project_id="p1",
        tenant="acme",
        owner="alice",
        original_name="clip.mp4",
        file_type="video",
        mime_type="video/mp4",
        s3_key=f"acme/projects/p1/media/{MEDIA_ID}.mp4",
        size=42,
        sha256="b" * 64,
        created_at="2024-01-01T00:00:00.000000+00:00",
        metadata={"caption": "c"},
        status=Status.PENDING,
        upload=upload,
    )
    metadata["later"] = "x"  # the draft keeps its own copy
    assert draft.metadata == {"caption": "c"}


def test_an_untyped_draft_has_no_type_and_no_extension_yet():
    """A tus upload's record before its first bytes (the same builder as form and direct)."""
    upload = TusUpload(expires_at="2030-01-01T00:00:00+00:00", length=None, part_size=1)
    draft = Destination(Principal("a", "acme", None), "p1", quarantined=True).draft(
        media_id=MEDIA_ID,
        original_name="a",
        sniffed=UNTYPED,
        size=0,
        sha256="",
        sha256_state=Sha256State.PENDING,
        created_at="t",
        metadata={},
        status=Status.PENDING,
        upload=upload,
    )
    assert (draft.file_type, draft.mime_type) == ("other", "")
    assert draft.s3_key == f"acme/projects/p1/media/{MEDIA_ID}"
    assert (draft.quarantined, draft.upload, draft.sha256_state) == (
        True,
        upload,
        Sha256State.PENDING,
    )


def test_an_untyped_draft_takes_the_type_its_first_bytes_say_and_the_key_it_gives():
    upload = TusUpload(expires_at="2030-01-01T00:00:00+00:00", length=None, part_size=1)
    draft = Destination(Principal("a", "acme", None), "p1").draft(
        media_id=MEDIA_ID,
        original_name="a",
        sniffed=UNTYPED,
        size=0,
        sha256="",
        sha256_state=Sha256State.PENDING,
        created_at="t",
        metadata={"k": "v"},
        status=Status.PENDING,
        upload=upload,
    )
    typed = with_type(draft, SniffedType("video/mp4", ".mp4"))
    assert typed == draft.evolve(
        mime_type="video/mp4",
        file_type="video",
        s3_key=f"acme/projects/p1/media/{MEDIA_ID}.mp4",
    )
    assert with_type(draft.evolve(tenant=""), SniffedType("image/png", ".png")).s3_key == (
        f"projects/p1/media/{MEDIA_ID}.png"
    )


@pytest.mark.parametrize(
    ("mime", "content_type", "disposition"),
    [
        ("image/png", "image/png", "inline; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png"),
        # no type of its own (a tus partial), or one never rendered: a download of bytes
        (
            "",
            "application/octet-stream",
            "attachment; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png",
        ),
        (
            "image/svg+xml",
            "application/octet-stream",
            "attachment; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png",
        ),
    ],
)
def test_served_headers_say_how_an_object_of_a_type_is_served(mime, content_type, disposition):
    assert served_headers("café.png", mime) == {
        "content_type": content_type,
        "content_disposition": disposition,
    }


def test_a_draft_is_stored_without_upload_state_by_default():
    draft = Destination(Principal("a", "", None), "p1").draft(
        media_id=MEDIA_ID,
        original_name="a.png",
        sniffed=SniffedType("image/png", ".png"),
        size=1,
        sha256="c" * 64,
        created_at="t",
        metadata={},
    )
    assert (draft.status, draft.upload) == (Status.STORED, None)


# -- an incoming file ------------------------------------------------------------------------------
def test_no_writer_opens_before_the_sniff_window_is_full():
    store = FakeStore()
    file = incoming(store)
    content = png_bytes(20_000)
    file.write(content[:8191])
    assert store.opened == [] and file.writer is None and file.sniffed is None
    file.write(content[8191:8192])  # exactly the window: now the type is known
    assert len(store.opened) == 1 and store.writers[0].data == content[:8192]
    file.write(content[8192:])
    assert store.writers[0].data == content and file.size == 20_000


def test_the_first_bytes_split_across_many_writes_are_kept_whole():
    store = FakeStore()
    file = incoming(store)
    content = png_bytes(20_000)
    for chunk in iter_chunks(content, 7):  # the PNG signature itself spans two writes
        file.write(chunk)
    file.finish(more_follow=False)
    [writer] = store.writers
    assert bytes(writer.data) == content
    assert file.sniffed == SniffedType("image/png", ".png")
    assert (file.size, file.sha256) == (20_000, hashlib.sha256(content).hexdigest())


def test_a_signature_in_the_second_write_is_still_sniffed():
    store = FakeStore()
    file = incoming(store)
    content = jpeg_bytes(3000)
    file.write(content[:2])  # b"\xff\xd8" alone is no type
    file.write(content[2:])
    file.finish(more_follow=False)
    assert store.opened[0]["content_type"] == "image/jpeg"
    assert bytes(store.writers[0].data) == content


@pytest.mark.parametrize(
    "sizes",
    [[100, 50_000], [8191, 1, 40_000], [2, 8190, 9], [50_000], [8192]],
    ids=["short-then-long", "one-short-of-the-window", "exactly-the-window", "long", "window"],
)
def test_a_first_read_of_any_size_is_written_whole_and_sniffed_from_its_first_bytes(
    monkeypatch, sizes
):
    import gateway.uploads.ingest

    heads = []
    sniff = gateway.uploads.ingest.checked_type
    monkeypatch.setattr(
        gateway.uploads.ingest,
        "checked_type",
        lambda head, *a, **k: heads.append(head) or sniff(head, *a, **k),
    )
    store = FakeStore()
    file = incoming(store)
    content = png_bytes(sum(sizes))
    offset = 0
    for size in sizes:
        file.write(memoryview(content)[offset : offset + size])  # as the parser hands them
        offset += size
    file.finish(more_follow=False)
    assert heads == [content[:8192]]
    assert bytes(store.writers[0].data) == content


def test_the_writer_gets_key_type_metadata_and_disposition():
    store = FakeStore()
    sha = hashlib.sha256(png_bytes(9000)).hexdigest()
    file = incoming(store, tenant="acme", subject="ann é", name="café.png", expected_sha256=sha)
    file.write(png_bytes(9000))
    assert store.opened == [
        {
            "key": f"acme/projects/p1/media/{MEDIA_ID}.png",
            "content_type": "image/png",
            "metadata": {
                "media-id": MEDIA_ID,
                "project-id": "p1",
                "owner": "ann%20%C3%A9",
                "original-name": "caf%C3%A9.png",
                "sha256": sha,
            },
            "content_disposition": (
                "inline; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png"
            ),
        }
    ]
    assert file.key == f"acme/projects/p1/media/{MEDIA_ID}.png"


def test_without_a_promised_checksum_the_metadata_has_none():
    store = FakeStore()
    file = incoming(store)
    file.write(png_bytes(100))
    file.finish(more_follow=False)
    assert "sha256" not in store.opened[0]["metadata"]


def test_a_refused_type_never_opens_a_writer():
    store = FakeStore()
    file = incoming(store, name="doc.png")
    with pytest.raises(errors.UnsupportedType) as caught:
        file.write(b"%PDF-1.7\n" + b"x" * 9000)
    assert caught.value.message == "File 'doc.png' is application/pdf; allowed: image/*, video/*."
    assert store.opened == [] and file.writer is None
    file.abort()  # nothing to abort: no error


def test_a_small_file_is_sniffed_when_it_ends():
    store = FakeStore()
    file = incoming(store)
    file.write(png_bytes(100))
    assert store.opened == []
    file.finish(more_follow=False)
    assert bytes(store.writers[0].data) == png_bytes(100) and store.writers[0].spills == 0


def test_an_empty_file_is_refused_and_opens_nothing():
    store = FakeStore()
    file = incoming(store)
    with pytest.raises(errors.EmptyFile) as caught:
        file.finish(more_follow=True)
    assert (caught.value.status, caught.value.code) == (422, "empty_file")
    assert store.opened == []


def test_a_small_file_of_a_refused_type_is_refused_when_it_ends():
    store = FakeStore()
    file = incoming(store)
    file.write(b"tiny")
    with pytest.raises(errors.UnsupportedType):
        file.finish(more_follow=False)
    assert store.opened == []


@pytest.mark.parametrize("more_follow, spills", [(True, 1), (False, 0)])
def test_the_buffers_are_spilled_only_when_more_files_follow(more_follow, spills):
    store = FakeStore()
    file = incoming(store)
    file.write(png_bytes(10_000))
    file.finish(more_follow=more_follow)
    assert store.writers[0].spills == spills


def test_the_promised_checksum_is_verified():
    content = png_bytes(10_000)
    good = incoming(FakeStore(), expected_sha256=hashlib.sha256(content).hexdigest())
    good.write(content)
    good.finish(more_follow=True)
    store = FakeStore()
    bad = incoming(store, expected_sha256="0" * 64)
    bad.write(content)
    with pytest.raises(errors.ChecksumMismatch) as caught:
        bad.finish(more_follow=True)
    assert (caught.value.status, caught.value.code) == (422, "checksum_mismatch")
    assert store.writers[0].spills == 0


def test_commit_marks_the_start_and_passes_the_checksum():
    store = FakeStore()
    file = incoming(store)
    content = png_bytes(10_000)
    file.write(content)
    file.finish(more_follow=False)
    assert file.commit_started is False
    file.commit()
    assert file.commit_started is True
    assert store.writers[0].committed == hashlib.sha256(content).hexdigest()


def test_a_commit_that_fails_still_counts_as_started():
    store = FakeStore()
    file = incoming(store)
    file.write(png_bytes(10_000))
    file.finish(more_follow=False)

    def fail(*, sha256):
        raise errors.StorageError()

    store.writers[0].commit = fail  # type: ignore[method-assign]
    with pytest.raises(errors.StorageError):
        file.commit()
    assert file.commit_started is True


def test_abort_aborts_an_open_writer():
    store = FakeStore()
    file = incoming(store)
    file.write(png_bytes(10_000))
    file.abort()
    assert store.writers[0].aborts == 1


def test_the_draft_of_an_incoming_file():
    store = FakeStore()
    file = incoming(store, tenant="acme", name="a.png")
    content = png_bytes(10_000)
    file.write(content)
    file.finish(more_follow=False)
    draft = file.draft(created_at="2024-01-01T00:00:00.000000+00:00", metadata={"k": "v"})
    assert draft == MediaRecord(
        media_id=MEDIA_ID,
        project_id="p1",
        tenant="acme",
        owner="alice",
        original_name="a.png",
        file_type="image",
        mime_type="image/png",
        s3_key=f"acme/projects/p1/media/{MEDIA_ID}.png",
        size=10_000,
        sha256=hashlib.sha256(content).hexdigest(),
        created_at="2024-01-01T00:00:00.000000+00:00",
        metadata={"k": "v"},
    )


def test_a_destination_in_the_quarantine_marks_its_drafts():
    sniffed = SniffedType("image/png", ".png")
    values = {
        "media_id": MEDIA_ID,
        "original_name": "a.png",
        "sniffed": sniffed,
        "size": 1,
        "sha256": "c" * 64,
        "created_at": "t",
        "metadata": {},
    }
    principal = Principal("a", "", None)
    assert Destination(principal, "p1").quarantined is False
    assert Destination(principal, "p1").draft(**values).quarantined is False
    held = Destination(principal, "p1", quarantined=True)
    assert held.draft(**values).quarantined is True
    assert held.key(MEDIA_ID, sniffed) == f"projects/p1/media/{MEDIA_ID}.png"  # the same key
