"""gateway.media.records (the backend-neutral part): the record type, the checked update, cursors,
and which backend a records URL opens. The backends themselves: test_record_store_contract.py."""

from __future__ import annotations

import base64
import json

import pytest

from gateway import errors
from gateway.config import Settings
from gateway.media.lifecycle import Status
from gateway.media.records import (
    DirectUpload,
    MediaRecord,
    Sha256State,
    TusUpload,
    checked_update,
    decode_cursor,
    encode_cursor,
    open_records,
    tus_state,
)
from gateway.media.records.dynamodb import DynamoRecordStore
from gateway.media.records.sqlite import SqliteRecordStore
from gateway.storage.resumable import CommittedPart, Stored

from support import JWT_SECRET

UPLOAD = DirectUpload(
    method="multipart",
    expires_at="2030-01-01T00:00:00+00:00",
    s3_upload_id="up-1",
    part_size=5 << 20,
    part_count=3,
    promised_sha256="f" * 64,
)


def record(**changes) -> MediaRecord:
    values = {
        "media_id": "a" * 32,
        "project_id": "p1",
        "tenant": "",
        "owner": "alice",
        "original_name": "cat.png",
        "file_type": "image",
        "mime_type": "image/png",
        "s3_key": f"projects/p1/media/{'a' * 32}.png",
        "size": 10,
        "sha256": "0" * 64,
        "created_at": "2024-05-06T07:08:09.000000+00:00",
    }
    values.update(changes)
    return MediaRecord(**values)


# -- the record ------------------------------------------------------------------------------------
def test_defaults_of_a_new_record():
    fresh = record()
    assert (fresh.metadata, fresh.status, fresh.reason, fresh.upload, fresh.version) == (
        {},
        Status.STORED,
        "",
        None,
        0,
    )
    assert UPLOAD.protocol == "direct" and DirectUpload("put", "x").completed_at == ""


def test_only_a_pending_upload_has_an_expiry():
    assert record(status=Status.PENDING, upload=UPLOAD).expires_at == "2030-01-01T00:00:00+00:00"
    assert record(status=Status.PENDING).expires_at == ""  # no upload state
    assert record(status=Status.STORED, upload=UPLOAD).expires_at == ""
    assert record(status=Status.EXPIRED, upload=UPLOAD).expires_at == ""


def test_evolve_changes_only_what_it_names():
    before = record(metadata={"k": "v"})
    after = before.evolve(status=Status.PROCESSING, reason="r")
    assert after == record(metadata={"k": "v"}, status=Status.PROCESSING, reason="r")
    assert before.status is Status.STORED


@pytest.mark.parametrize(
    "original",
    [
        record(),
        record(status=Status.PENDING, upload=UPLOAD, metadata={"a": "b"}, version=4),
        record(status=Status.REJECTED, reason="sha256 differs", tenant="acme"),
    ],
)
def test_a_record_survives_a_round_trip_through_json(original):
    data = json.loads(json.dumps(original.to_dict()))
    assert data["status"] == original.status.value
    again = MediaRecord.from_dict(data)
    assert again == original
    assert type(again.status) is Status and type(again.upload) is type(original.upload)


def test_a_record_with_variants_survives_a_round_trip():
    from gateway.media.records import VariantInfo

    variant = VariantInfo(
        "thumb-320", f"projects/p1/media/{'a' * 32}/thumb-320.webp", "image/webp", 320, 240, 999
    )
    original = record(status=Status.READY, variants=[variant], properties={"width": 640})
    again = MediaRecord.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original and type(again.variants[0]) is VariantInfo


def test_a_record_stored_before_processing_existed_still_loads():
    """Rows written before the processing fields existed have none of them."""
    data = record().to_dict()
    for added in ("quarantined", "stage", "properties", "variants"):
        del data[added]
    again = MediaRecord.from_dict(data)
    assert again == record()
    assert (again.quarantined, again.stage, again.properties, again.variants) == (False, "", {}, [])


# -- how the SHA-256 is known ------------------------------------------------------------------------
def test_a_record_is_pending_exactly_when_it_has_no_sha256():
    assert record().sha256_state is Sha256State.RECEIVED  # the default: a streamed form's
    assert record(sha256="", sha256_state=Sha256State.PENDING).sha256 == ""
    with pytest.raises(ValueError, match="only pending has none"):
        record(sha256="")  # "" is never a value
    with pytest.raises(ValueError, match="only pending has none"):
        record(sha256_state=Sha256State.PENDING)  # a value says how it is known
    with pytest.raises(ValueError, match="only pending has none"):
        record().evolve(sha256="")


@pytest.mark.parametrize("state", list(Sha256State))
def test_the_sha256_state_survives_a_round_trip_through_json(state):
    original = record(sha256="" if state is Sha256State.PENDING else "1" * 64, sha256_state=state)
    data = json.loads(json.dumps(original.to_dict()))
    assert data["sha256_state"] == state.value
    again = MediaRecord.from_dict(data)
    assert again == original and type(again.sha256_state) is Sha256State


TUS = {"expires_at": "2030-01-01T00:00:00+00:00", "length": 10, "part_size": 5 << 20}


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({}, Sha256State.RECEIVED),  # a streamed form
        ({"sha256": "", "upload": UPLOAD}, Sha256State.PENDING),
        ({"sha256": "f" * 64, "upload": UPLOAD}, Sha256State.VERIFIED),  # as promised
        ({"sha256": "0" * 64, "upload": DirectUpload("put", "x")}, Sha256State.COMPUTED),
        ({"upload": TusUpload(**TUS, sha256="0" * 64)}, Sha256State.RECEIVED),  # one request
        ({"upload": TusUpload(**TUS)}, Sha256State.COMPUTED),  # in pieces: by processing
        ({"properties": {"uploadedSha256": "1" * 64}}, Sha256State.COMPUTED),  # GPS removed
        (
            {"upload": UPLOAD, "sha256": "0" * 64, "properties": {"uploadedSha256": "f" * 64}},
            Sha256State.COMPUTED,
        ),
    ],
    ids=[
        "form",
        "no-hash",
        "direct-promised",
        "direct-by-processing",
        "tus-whole",
        "tus-pieces",
        "original-replaced",
        "direct-original-replaced",
    ],
)
def test_a_record_stored_before_the_sha256_state_existed_gets_it_from_what_it_says(changes, state):
    data = record(**changes, sha256_state=state).to_dict()
    del data["sha256_state"]
    assert MediaRecord.from_dict(data).sha256_state is state


def test_a_record_stored_before_its_properties_existed_is_a_streamed_form():
    data = record().to_dict()
    del data["sha256_state"], data["properties"]
    again = MediaRecord.from_dict(data)
    assert again.sha256_state is Sha256State.RECEIVED and again.properties == {}


def test_from_dict_does_not_change_its_argument():
    data = record(status=Status.PENDING, upload=UPLOAD).to_dict()
    snapshot = json.loads(json.dumps(data))
    MediaRecord.from_dict(data)
    assert data == snapshot


# -- checked update ------------------------------------------------------------------------------
def test_an_update_along_the_table_bumps_the_version():
    current = record(version=3)
    new = checked_update(current, current.evolve(status=Status.PROCESSING))
    assert new == current.evolve(status=Status.PROCESSING, version=4)


def test_an_update_that_keeps_the_status_is_always_allowed():
    current = record(status=Status.READY, version=0)  # READY allows no move at all
    new = checked_update(current, current.evolve(metadata={"w": "1"}))
    assert (new.status, new.metadata, new.version) == (Status.READY, {"w": "1"}, 1)


def test_an_illegal_transition_is_refused_with_both_statuses():
    current = record(status=Status.READY)
    with pytest.raises(errors.IllegalTransition) as caught:
        checked_update(current, current.evolve(status=Status.PROCESSING))
    assert caught.value.message == "A media item cannot move from ready to processing."
    assert (caught.value.status, caught.value.code) == (409, "illegal_transition")


def test_an_update_must_keep_the_media_id():
    with pytest.raises(ValueError, match=r"^update must keep the media id$"):
        checked_update(record(), record(media_id="b" * 32))


# -- cursors -------------------------------------------------------------------------------------
def test_a_cursor_is_unpadded_urlsafe_base64_of_json():
    cursor = encode_cursor("2024-05-06T07:08:09.000000+00:00", "a" * 32)
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor
    padded = cursor + "=" * (-len(cursor) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == [
        "2024-05-06T07:08:09.000000+00:00",
        "a" * 32,
    ]


@pytest.mark.parametrize(
    "created_at, media_id",
    [
        ("2024-05-06T07:08:09.000000+00:00", "a" * 32),
        ("", "0123456789abcdef0123456789abcdef"),
        ("x" * 7, "f" * 32),  # every padding length
        ("xy", "0" * 32),
        ("xyz", "1" * 32),
    ],
)
def test_cursors_round_trip(created_at, media_id):
    cursor = encode_cursor(created_at, media_id)
    assert "=" not in cursor  # unpadded, whatever the length
    assert decode_cursor(cursor) == (created_at, media_id)


def _raw(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        "a",  # not a whole base64 quantum
        "é",  # not ASCII
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _raw("just a string"),
        _raw(["only one"]),
        _raw(["a", "b", "c"]),
        _raw(["a", 1]),
        _raw([1, "b"]),
        _raw({"a": "b", "c": "d"}),
        _raw(None),
        _raw(["é", "a" * 32]),  # created_at must be ASCII
        _raw(["2024", "A" * 32]),  # the media id must be one
        _raw(["2024", "a" * 31]),
        _raw(["2024", "a" * 32 + "\n"]),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),  # too deep for json
    ],
)
def test_a_bad_cursor_is_invalid_cursor(cursor):
    with pytest.raises(errors.InvalidCursor) as caught:
        decode_cursor(cursor)
    assert (caught.value.status, caught.value.code) == (400, "invalid_cursor")


# -- which backend -------------------------------------------------------------------------------
def test_a_sqlite_url_opens_sqlite_at_its_path(tmp_path):
    settings = Settings(jwt_secret=JWT_SECRET, records_url=f"sqlite:///{tmp_path}/r.db")
    store = open_records(settings)
    assert isinstance(store, SqliteRecordStore) and store.path == f"{tmp_path}/r.db"


def test_a_dynamodb_url_opens_dynamodb_with_its_table():
    settings = Settings(
        jwt_secret=JWT_SECRET,
        records_url="dynamodb://Xmedia-tableX/",
        dynamodb_endpoint_url="http://127.0.0.1:9",
    )
    store = open_records(settings)
    assert isinstance(store, DynamoRecordStore) and store.table == "Xmedia-tableX"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"


# -- a tus upload's stored state ---------------------------------------------------------------------
def test_a_tus_upload_says_what_storage_holds_and_takes_what_it_holds_next():
    upload = TusUpload(
        expires_at="2030-01-01T00:00:00+00:00",
        length=30,
        part_size=10,
        offset=13,
        parts=(CommittedPart(2, "e1", 10),),
        pending_key=".tus/a/pending-3",
        pending_size=3,
        s3_upload_id="up-1",
        hash_state="h",
    )
    assert upload.stored == Stored(
        parts=(CommittedPart(2, "e1", 10),),
        tail_key=".tus/a/pending-3",
        tail_size=3,
        upload_id="up-1",
    )
    later = Stored(
        parts=(CommittedPart(2, "e1", 10), CommittedPart(10, "e2", 10)), upload_id="up-1"
    )
    assert upload.holding(later, offset=20, hash_state="h2") == TusUpload(
        expires_at="2030-01-01T00:00:00+00:00",
        length=30,
        part_size=10,
        offset=20,
        parts=later.parts,
        pending_key="",
        pending_size=0,
        s3_upload_id="up-1",
        hash_state="h2",
    )
    assert upload.holding(upload.stored) == upload


def test_tus_state_is_a_tus_records_upload():
    upload = TusUpload(expires_at="2030-01-01T00:00:00+00:00", length=None, part_size=1)
    assert tus_state(record(upload=upload, sha256="", sha256_state=Sha256State.PENDING)) is upload
    with pytest.raises(AssertionError):
        tus_state(record(upload=UPLOAD))
