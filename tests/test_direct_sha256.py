"""Every direct upload ends with the SHA-256 of its stored bytes, and says how it is known.

- promised: checked at ``complete``, by reading the object back (the default), or from the
  checksum S3 reports where the store verifies it (``GATEWAY_S3_VERIFIES_SHA256``): ``verified``;
  a wrong promise is refused and leaves nothing;
- not promised: ``pending`` (``sha256`` null, never ``""``) until processing, which reads the
  object anyway, computes it: ``computed``, also when the type has nothing to derive, when the
  file cannot be decoded and when the decoder crashes; with processing off, ``complete``
  computes it.

Against the moto server; processing runs in this process (as in tests/test_pipeline.py). Reads
are counted on the gateway's S3 calls, never timed.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter

import media_samples as samples
import pytest
import requests
from clamd_harness import MARKER
from jsonschema import Draft202012Validator, ValidationError
from test_direct import assert_gone, complete, initiate, promise, read, send_parts, send_post
from test_pipeline import settled, work

from gateway import create_app
from gateway.http.api.openapi import document
from gateway.http.auth import mint_token
from gateway.media.lifecycle import Status
from gateway.media.records import Sha256State
from gateway.processing.sandbox import SandboxError
from gateway.storage.keys import staging_key

from conftest import init_stores, make_settings
from support import MiB, mp4_bytes, png_bytes

pytestmark = pytest.mark.timeout(180)
PART = 5 * MiB
ZIP = b"PK\x03\x04" + bytes(range(256)) * 40  # sniffs as application/zip: nothing to derive


def direct_gateway(tmp_path, moto_url, **overrides):
    settings = make_settings(
        tmp_path,
        backend="s3",
        moto_url=moto_url,
        direct_part_size=PART,
        direct_single_put_max=PART,
        allowed_types=("image/*", "video/*", "application/zip"),
        **overrides,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app.test_client(), svc, auth


def count_s3_checks(svc, monkeypatch) -> Counter:
    """How often complete reads an object back (``sha256``) or asks S3 for its checksum."""
    calls: Counter = Counter()
    direct = svc.direct.direct
    for name in ("sha256", "reported_sha256"):
        original = getattr(direct, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(direct, name, counted)
    return calls


def b64(digest_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(digest_hex)).decode()


def send_put(upload, content: bytes, *, checksum_of: bytes | None = None) -> None:
    """PUT with the presigned URL and headers. moto keeps an ``x-amz-checksum-sha256`` (and
    reports it on HeadObject) only when ``x-amz-sdk-checksum-algorithm`` names it, as SDKs send;
    AWS keeps it from the checksum header alone. ``checksum_of`` sends another checksum than the
    one signed: moto stores it, AWS would refuse the request (signature, then BadDigest)."""
    headers = {**upload["put"]["headers"], "Content-Length": str(len(content))}
    if "x-amz-checksum-sha256" in headers:
        headers["x-amz-sdk-checksum-algorithm"] = "SHA256"
    if checksum_of is not None:
        headers["x-amz-checksum-sha256"] = b64(hashlib.sha256(checksum_of).hexdigest())
        headers["x-amz-sdk-checksum-algorithm"] = "SHA256"
    response = requests.put(upload["put"]["url"], data=content, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


def upload_direct(client, auth, content, content_type, method, *, sha256=False, name="f"):
    """Initiate, send the bytes by ``method`` and complete: (the upload, complete's answer)."""
    [upload] = initiate(client, auth, [promise(content, content_type, name, sha256)]).get_json()[
        "uploads"
    ]
    assert upload["method"] == ("multipart" if method == "multipart" else "put")
    parts = None
    if method == "put":
        send_put(upload, content)
    elif method == "post":
        assert send_post(upload, content).status_code in (200, 204)
    else:
        parts = send_parts(upload, content)
    return upload, complete(client, auth, upload["uploadId"], parts)


MEDIA_SCHEMA = Draft202012Validator(document()["components"]["schemas"]["Media"])


def media(client, auth, media_id):
    response = client.get(f"/api/media/{media_id}", headers=auth)
    assert response.status_code == 200
    MEDIA_SCHEMA.validate(response.get_json())  # as /openapi.json describes it
    return response.get_json()


def test_the_described_media_schema_refuses_an_empty_sha256():
    """The control for the schema checks above: "" is no SHA-256, and the state is an enum."""
    view = {"sha256": None, "sha256State": "pending"}
    properties = MEDIA_SCHEMA.schema["properties"]
    Draft202012Validator(properties["sha256"]).validate(view["sha256"])
    with pytest.raises(ValidationError):
        Draft202012Validator(properties["sha256"]).validate("")
    with pytest.raises(ValidationError):
        Draft202012Validator(properties["sha256State"]).validate("unknown")
    assert properties["sha256State"]["enum"] == ["received", "verified", "pending", "computed"]


def queued_jobs(svc) -> int:
    stats = svc.queue.stats()
    return stats.visible + stats.in_flight


# -- without a promise: pending, then computed by processing ------------------------------------
@pytest.mark.parametrize(
    ("method", "content", "content_type", "outcome"),
    [
        ("put", samples.png(600, 400), "image/png", Status.READY),
        ("post", samples.png(600, 400), "image/png", Status.READY),
        ("put", ZIP, "application/zip", Status.READY),  # no deriving for the type
        ("multipart", mp4_bytes(PART + 1000), "video/mp4", Status.FAILED),  # cannot be decoded
    ],
    ids=["put", "post", "nothing-to-derive", "multipart-undecodable"],
)
def test_without_a_promise_processing_computes_it_from_the_stored_object(
    tmp_path, moto_url, monkeypatch, method, content, content_type, outcome
):
    client, svc, auth = direct_gateway(tmp_path, moto_url)
    checks = count_s3_checks(svc, monkeypatch)
    upload, done = upload_direct(client, auth, content, content_type, method)
    assert done.status_code == 200, done.get_json()
    answer = done.get_json()["media"]
    assert (answer["sha256"], answer["sha256State"]) == (None, "pending")
    assert checks == Counter()  # complete read nothing back: processing will
    assert media(client, auth, upload["uploadId"])["sha256State"] == "pending"

    work(svc, settled(svc, upload["uploadId"]))
    record = svc.records.get(upload["uploadId"])
    assert record.status is outcome, record.reason
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    if outcome is Status.FAILED:  # withheld: moved out of the public store's reach
        assert read(svc, upload["s3Key"]) is None
        stored = b"".join(svc.storage.holding.store.read(record.s3_key))
    else:
        stored = read(svc, upload["s3Key"])
    assert record.sha256 == hashlib.sha256(stored).hexdigest()
    assert record.sha256_state is Sha256State.COMPUTED
    shown = media(client, auth, upload["uploadId"])
    assert (shown["sha256"], shown["sha256State"]) == (record.sha256, "computed")
    if content_type == "application/zip":
        assert record.properties == {"format": "application/zip"} and record.variants == []


def test_a_crashing_decoder_leaves_a_failed_record_with_its_sha256(tmp_path, moto_url, monkeypatch):
    """The hash is written as soon as the worker has read the bytes: a job that then crashes on
    every delivery ends failed (dead letter) with it."""
    client, svc, auth = direct_gateway(tmp_path, moto_url, queue_max_receives=2)
    crashes = []

    def crash(*args, **kwargs):
        crashes.append(args[1])
        raise SandboxError("killed by signal 11", kind="crashed")

    monkeypatch.setattr("gateway.processing.pipeline.run", crash)
    content = samples.png(600, 400)
    upload, done = upload_direct(client, auth, content, "image/png", "put")
    assert done.status_code == 200
    work(svc, lambda: svc.queue.stats().dead == 1)
    record = svc.records.get(upload["uploadId"])
    assert record.status is Status.FAILED and "crashed" in record.reason
    assert len(crashes) == 2  # both deliveries reached the decoder
    assert (record.sha256, record.sha256_state) == (
        hashlib.sha256(content).hexdigest(),
        Sha256State.COMPUTED,
    )


@pytest.mark.parametrize("infected", [False, True], ids=["clean", "infected"])
def test_with_scanning_the_scan_read_computes_it(tmp_path, moto_url, clamd_url, infected):
    """The scanner reads the whole object from the quarantine: hashed on the way, also when it
    is infected (the record keeps the SHA-256 of what was refused)."""
    client, svc, auth = direct_gateway(tmp_path, moto_url, clamd_url=clamd_url)
    content = samples.png(600, 400) + (MARKER if infected else b"")
    upload, done = upload_direct(client, auth, content, "image/png", "put")
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["media"]["sha256State"] == "pending"
    work(svc, settled(svc, upload["uploadId"]))
    record = svc.records.get(upload["uploadId"])
    assert record.status is (Status.INFECTED if infected else Status.READY), record.reason
    assert (record.sha256, record.sha256_state) == (
        hashlib.sha256(content).hexdigest(),
        Sha256State.COMPUTED,
    )


def test_with_processing_off_complete_computes_it(tmp_path, moto_url, monkeypatch):
    """Nothing else would ever read the object: complete reads it back once."""
    client, svc, auth = direct_gateway(tmp_path, moto_url, processing=False)
    checks = count_s3_checks(svc, monkeypatch)
    content = png_bytes(300_000)
    upload, done = upload_direct(client, auth, content, "image/png", "put")
    assert done.status_code == 200, done.get_json()
    answer = done.get_json()["media"]
    assert answer["status"] == "stored"
    assert (answer["sha256"], answer["sha256State"]) == (
        hashlib.sha256(content).hexdigest(),
        "computed",
    )
    assert checks == Counter({"sha256": 1})
    assert queued_jobs(svc) == 0
    assert svc.records.get(upload["uploadId"]).sha256_state is Sha256State.COMPUTED


# -- with a promise: verified at complete, or refused ------------------------------------------------
@pytest.mark.parametrize("method", ["put", "post", "multipart"])
def test_a_right_promise_is_verified_by_reading_the_object_back(
    tmp_path, moto_url, monkeypatch, method
):
    client, svc, auth = direct_gateway(tmp_path, moto_url)
    checks = count_s3_checks(svc, monkeypatch)
    content = mp4_bytes(PART + 1000) if method == "multipart" else png_bytes(300_000)
    kind = "video/mp4" if method == "multipart" else "image/png"
    upload, done = upload_direct(client, auth, content, kind, method, sha256=True)
    assert done.status_code == 200, done.get_json()
    answer = done.get_json()["media"]
    assert (answer["sha256"], answer["sha256State"]) == (
        hashlib.sha256(content).hexdigest(),
        "verified",
    )
    assert checks == Counter({"sha256": 1})  # the store's checksum is not asked for: off
    record = svc.records.get(upload["uploadId"])
    assert record.sha256_state is Sha256State.VERIFIED
    assert record.sha256 == hashlib.sha256(read(svc, upload["s3Key"])).hexdigest()


@pytest.mark.parametrize("method", ["put", "multipart"])
def test_a_wrong_promise_is_refused_and_leaves_nothing(tmp_path, moto_url, method):
    client, svc, auth = direct_gateway(tmp_path, moto_url)
    content = mp4_bytes(PART + 1000) if method == "multipart" else png_bytes(300_000)
    kind = "video/mp4" if method == "multipart" else "image/png"
    item = promise(content, kind)
    item["sha256"] = hashlib.sha256(content + b"!").hexdigest()
    [upload] = initiate(client, auth, [item]).get_json()["uploads"]
    parts = None
    if method == "put":
        send_put(upload, content)
    else:
        parts = send_parts(upload, content)
    response = complete(client, auth, upload["uploadId"], parts)
    assert response.status_code == 422
    assert response.get_json()["error"] == {
        "code": "upload_rejected",
        "message": "The SHA-256 of what S3 holds differs from the one promised.",
    }
    assert_gone(svc, upload, "rejected")
    record = svc.records.get(upload["uploadId"])
    assert (record.sha256, record.sha256_state) == ("", Sha256State.PENDING)
    assert queued_jobs(svc) == 0


def test_the_read_back_catches_bytes_a_store_accepted_under_the_promised_checksum(
    tmp_path, moto_url
):
    """moto (like Ceph) stores a PUT whose bytes differ from its x-amz-checksum-sha256: with
    GATEWAY_S3_VERIFIES_SHA256 off, the gateway reads the bytes and refuses them."""
    client, svc, auth = direct_gateway(tmp_path, moto_url)
    promised, sent = png_bytes(300_000, seed=3), png_bytes(300_000, seed=4)
    [upload] = initiate(client, auth, [promise(promised, "image/png", sha256=True)]).get_json()[
        "uploads"
    ]
    send_put(upload, sent)
    stored = svc.store.client.head_object(
        Bucket=svc.store.bucket, Key=staging_key(upload["s3Key"]), ChecksumMode="ENABLED"
    )  # stored, under the promised checksum
    assert stored["ContentLength"] == len(sent)
    assert stored["ChecksumSHA256"] == b64(hashlib.sha256(promised).hexdigest())
    response = complete(client, auth, upload["uploadId"])
    assert response.status_code == 422
    assert "SHA-256" in response.get_json()["error"]["message"]
    assert_gone(svc, upload, "rejected")


# -- where S3 verifies the checksum (GATEWAY_S3_VERIFIES_SHA256=on) -----------------------------------
def test_where_s3_verifies_it_its_checksum_stands_in_for_the_read(tmp_path, moto_url, monkeypatch):
    client, svc, auth = direct_gateway(tmp_path, moto_url, s3_verifies_sha256=True)
    checks = count_s3_checks(svc, monkeypatch)
    content = png_bytes(300_000)
    upload, done = upload_direct(client, auth, content, "image/png", "put", sha256=True)
    assert done.status_code == 200, done.get_json()
    answer = done.get_json()["media"]
    assert (answer["sha256"], answer["sha256State"]) == (
        hashlib.sha256(content).hexdigest(),
        "verified",
    )
    assert checks == Counter({"reported_sha256": 1})  # no read of the bytes
    assert svc.records.get(upload["uploadId"]).sha256_state is Sha256State.VERIFIED


def test_where_s3_verifies_it_a_different_checksum_is_refused_unread(
    tmp_path, moto_url, monkeypatch
):
    client, svc, auth = direct_gateway(tmp_path, moto_url, s3_verifies_sha256=True)
    checks = count_s3_checks(svc, monkeypatch)
    content = png_bytes(300_000)
    [upload] = initiate(client, auth, [promise(content, "image/png", sha256=True)]).get_json()[
        "uploads"
    ]
    send_put(upload, content, checksum_of=b"other bytes")
    response = complete(client, auth, upload["uploadId"])
    assert response.status_code == 422
    assert response.get_json()["error"]["message"] == (
        "The SHA-256 of what S3 holds differs from the one promised."
    )
    assert checks == Counter({"reported_sha256": 1})
    assert_gone(svc, upload, "rejected")
    assert queued_jobs(svc) == 0


@pytest.mark.parametrize("method", ["post", "multipart"])
def test_where_s3_verifies_it_objects_without_its_checksum_are_read_back(
    tmp_path, moto_url, monkeypatch, method
):
    """A POST form carries no checksum header; a multipart object has only a checksum of its
    parts' checksums: both are read back."""
    client, svc, auth = direct_gateway(tmp_path, moto_url, s3_verifies_sha256=True)
    checks = count_s3_checks(svc, monkeypatch)
    content = mp4_bytes(PART + 1000) if method == "multipart" else png_bytes(300_000)
    kind = "video/mp4" if method == "multipart" else "image/png"
    upload, done = upload_direct(client, auth, content, kind, method, sha256=True)
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["media"]["sha256State"] == "verified"
    assert checks == Counter({"reported_sha256": 1, "sha256": 1})
    assert svc.records.get(upload["uploadId"]).sha256 == hashlib.sha256(content).hexdigest()
