"""Direct uploads whose client sends every S3 request itself, each signed by the gateway
(``signRequests``: Uppy's @uppy/aws-s3 ``signRequest``), against the moto server. The S3 requests
are sent with ``requests`` exactly as the plugin sends them: the signed URL and headers only.
Every refusal leaves the record as it was and nothing in S3 for the key."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway import create_app

from conftest import init_stores, make_settings
from support import MiB, jpeg_bytes, png_bytes

PART = 5 * MiB


@pytest.fixture(params=["s3", "s3+dynamodb"])
def backend(request):
    return request.param


@pytest.fixture
def settings(tmp_path, backend, moto_url):
    return make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto_url,
        direct_part_size=PART,
        direct_single_put_max=PART,
        cors_origins=("http://127.0.0.1:8080",),
    )


def initiate(client, auth, *contents: tuple[bytes, str], sign: object = True, sha256=False):
    files = []
    for content, content_type in contents:
        item = {"filename": "f", "contentType": content_type, "size": len(content)}
        if sha256:
            item["sha256"] = hashlib.sha256(content).hexdigest()
        files.append(item)
    return client.post(
        "/api/uploads/initiate",
        headers=auth,
        json={"projectId": "p1", "files": files, "signRequests": sign},
    )


def sign(client, auth, **request):
    return client.post("/api/uploads/sign", headers=auth, json=request)


def signed(client, auth, **request) -> dict:
    """A signed request; its ``headers`` are exactly those the URL was signed with, but Host and
    Content-Length (moto checks no signature, so this is what proves the browser can send it)."""
    answer = sign(client, auth, **request)
    assert answer.status_code == 200, answer.get_json()
    presigned = answer.get_json()
    query = parse_qs(urlsplit(presigned["url"]).query)
    signed_headers = set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert {h.lower() for h in presigned["headers"]} == signed_headers - {"host", "content-length"}
    return presigned


def expires_of(presigned: dict) -> int:
    return int(parse_qs(urlsplit(presigned["url"]).query)["X-Amz-Expires"][0])


def send(presigned: dict, method: str, data: bytes | None = None) -> requests.Response:
    return requests.request(
        method, presigned["url"], data=data, headers=presigned.get("headers", {}), timeout=60
    )


def s3_state(svc, key: str) -> tuple[list[str], list[str]]:
    """(objects, multipart uploads) S3 holds under the upload's key."""
    listing = svc.storage.listing
    objects = [
        svc.store.full_key(o.key)
        for o in listing.objects()
        if svc.store.full_key(o.key).startswith(key)
    ]
    uploads = [
        svc.store.full_key(u.key)
        for u in listing.pending_uploads()
        if svc.store.full_key(u.key).startswith(key)
    ]
    return objects, uploads


def upload_id_of(xml: str) -> str:
    return re.search(r"<UploadId>([^<]+)</UploadId>", xml).group(1)


def create(client, auth, key: str) -> str:
    presigned = signed(client, auth, method="POST", key=key)
    assert presigned["key"] == key
    answer = send(presigned, "POST")
    assert answer.status_code == 200, answer.text
    return upload_id_of(answer.text)


def send_parts(client, auth, key, s3_upload_id, content, numbers) -> list[dict]:
    parts = []
    for number in numbers:
        chunk = content[(number - 1) * PART : number * PART]
        presigned = signed(
            client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=number
        )
        answer = send(presigned, "PUT", chunk)
        assert answer.status_code == 200, answer.text
        parts.append({"PartNumber": number, "ETag": answer.headers["ETag"]})
    return parts


def complete_in_s3(client, auth, key, s3_upload_id, parts) -> requests.Response:
    body = (
        "<CompleteMultipartUpload>"
        + "".join(
            f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>"
            for p in parts
        )
        + "</CompleteMultipartUpload>"
    )
    presigned = signed(client, auth, method="POST", key=key, uploadId=s3_upload_id)
    return send(presigned, "POST", body.encode())


def test_a_single_put_signed_for_the_client_is_stored_once_complete_checks_it(client, auth, svc):
    content = png_bytes(300_000)
    answer = initiate(client, auth, (content, "image/png"), sha256=True)
    assert answer.status_code == 201
    (upload,) = answer.get_json()["uploads"]
    assert upload["method"] == "put" and upload["key"].endswith(".png.upload")
    presigned = signed(client, auth, method="PUT", key=upload["key"], contentType="image/png")
    assert presigned["key"] == upload["key"]
    assert "Content-Length" not in presigned["headers"]
    assert presigned["headers"]["Content-Type"] == "image/png"
    assert "x-amz-checksum-sha256" in presigned["headers"]
    assert send(presigned, "PUT", content).status_code == 200
    done = client.post(f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json={})
    assert done.status_code == 200 and done.get_json()["status"] == "stored"
    record = svc.records.get(upload["uploadId"])
    assert svc.storage.direct.sha256(record.s3_key) == hashlib.sha256(content).hexdigest()
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    objects, uploads = s3_state(svc, upload["key"].removesuffix(".upload"))
    assert objects == [upload["key"].removesuffix(".upload")] and uploads == []


def test_a_multipart_upload_the_client_creates_sends_and_completes_is_stored(client, auth, svc):
    content = jpeg_bytes(3 * PART - 1000)
    answer = initiate(client, auth, (content, "image/jpeg"), sha256=True)
    (upload,) = answer.get_json()["uploads"]
    assert upload["method"] == "multipart" and "parts" not in upload["multipart"]
    assert upload["multipart"] == {"partSize": PART, "partCount": 3}
    key = upload["key"]
    record = svc.records.get(upload["uploadId"])
    assert record.upload.s3_upload_id == ""  # the client creates it
    assert s3_state(svc, key) == ([], [])
    s3_upload_id = create(client, auth, key)
    parts = send_parts(client, auth, key, s3_upload_id, content, [1, 2])
    assert svc.records.get(upload["uploadId"]).upload.s3_upload_id == s3_upload_id  # adopted
    # Resuming (after a reload): ListParts shows what S3 has.
    listed = send(signed(client, auth, method="GET", key=key, uploadId=s3_upload_id), "GET")
    assert listed.status_code == 200
    assert re.findall(r"<PartNumber>(\d+)</PartNumber>", listed.text) == ["1", "2"]
    parts += send_parts(client, auth, key, s3_upload_id, content, [3])
    assert complete_in_s3(client, auth, key, s3_upload_id, parts).status_code == 200
    done = client.post(f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json={})
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["status"] == "stored"
    record = svc.records.get(upload["uploadId"])
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    held = svc.storage.direct.sha256(record.s3_key)
    assert held == hashlib.sha256(content).hexdigest()
    head = svc.storage.direct.head(record.s3_key)
    assert head.size == len(content) and head.content_type == "image/jpeg"
    assert s3_state(svc, key) == ([key], [])


def refused(answer, status: int, code: str) -> None:
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["error"]["code"] == code


@pytest.fixture
def multipart(client, auth):
    content = jpeg_bytes(2 * PART + 10)
    (upload,) = initiate(client, auth, (content, "image/jpeg")).get_json()["uploads"]
    return upload, content


def test_requests_its_method_does_not_allow_are_refused(client, auth, svc, multipart):
    upload, _ = multipart
    key = upload["key"]
    before = svc.records.get(upload["uploadId"])
    refused(sign(client, auth, method="PUT", key=key), 400, "invalid_sign_request")  # PutObject
    refused(sign(client, auth, method="DELETE", key=key), 400, "invalid_sign_request")
    refused(sign(client, auth, method="POST", key=key + ".upload"), 400, "invalid_sign_request")
    refused(sign(client, auth, method="PATCH", key=key), 400, "invalid_sign_request")
    refused(sign(client, auth, method="POST"), 400, "invalid_sign_request")
    refused(sign(client, auth, method="POST", key=key, partNumber=1), 400, "invalid_sign_request")
    refused(sign(client, auth, method="GET", key=key, uploadId=""), 400, "invalid_sign_request")
    s3_upload_id = create(client, auth, key)
    for number in (0, 4, -1):
        refused(
            sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=number),
            400,
            "invalid_part_range",
        )
    refused(
        sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber="1"),
        400,
        "invalid_part_range",
    )
    refused(
        sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id),
        400,
        "invalid_sign_request",
    )
    # A single upload is one PutObject: no multipart upload of it.
    (single,) = initiate(client, auth, (png_bytes(1000), "image/png")).get_json()["uploads"]
    refused(sign(client, auth, method="POST", key=single["key"]), 400, "invalid_sign_request")
    refused(
        sign(client, auth, method="PUT", key=single["key"].removesuffix(".upload")),
        400,
        "invalid_sign_request",
    )
    # The record never moved, and S3 holds nothing but the client's (empty) multipart upload.
    assert svc.records.get(upload["uploadId"]).status == before.status
    assert s3_state(svc, key) == ([], [key])


def test_a_part_url_is_bound_to_that_parts_exact_length(client, auth, svc, multipart, monkeypatch):
    """SigV4 signs Content-Length (S3 refuses another length; moto does not check it, so the
    signed header and the length signed are what is checked here)."""
    upload, _ = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    direct = svc.direct.direct
    lengths, real = [], direct.client.generate_presigned_url

    def spy(operation, **kwargs):
        lengths.append(kwargs["Params"].get("ContentLength"))
        return real(operation, **kwargs)

    monkeypatch.setattr(direct.client, "generate_presigned_url", spy)
    for number in (1, 3):
        presigned = signed(
            client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=number
        )
        query = parse_qs(urlsplit(presigned["url"]).query)
        assert "content-length" in query["X-Amz-SignedHeaders"][0].split(";")
    assert lengths == [PART, 10]


def test_keys_of_others_or_not_made_by_the_gateway_are_not_found(
    client, auth, token, svc, multipart
):
    upload, _ = multipart
    mallory = {"Authorization": f"Bearer {token(sub='mallory', projects=['p1'])}"}
    refused(sign(client, mallory, method="POST", key=upload["key"]), 404, "upload_not_found")
    refused(sign(client, auth, method="POST", key="elsewhere/x.jpg"), 404, "upload_not_found")
    refused(
        sign(client, auth, method="POST", key=svc.store.full_key("projects/p1/media/nope.jpg")),
        404,
        "upload_not_found",
    )
    assert s3_state(svc, upload["key"]) == ([], [])


def test_once_adopted_another_upload_id_is_refused_and_an_unknown_one_never_adopted(
    client, auth, svc, multipart
):
    upload, content = multipart
    key = upload["key"]
    refused(
        sign(client, auth, method="PUT", key=key, uploadId="made-up", partNumber=1),
        409,
        "upload_id_mismatch",
    )
    assert svc.records.get(upload["uploadId"]).upload.s3_upload_id == ""
    first = create(client, auth, key)
    second = create(client, auth, key)  # a retried create: both exist until one is adopted
    send_parts(client, auth, key, first, content, [1])
    refused(
        sign(client, auth, method="PUT", key=key, uploadId=second, partNumber=1),
        409,
        "upload_id_mismatch",
    )
    refused(sign(client, auth, method="POST", key=key), 409, "upload_id_mismatch")
    assert svc.records.get(upload["uploadId"]).upload.s3_upload_id == first


def test_aborting_an_adopted_upload_leaves_nothing_and_signing_then_is_refused(
    client, auth, svc, multipart
):
    upload, content = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    send_parts(client, auth, key, s3_upload_id, content, [1])
    aborted = client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth)
    assert aborted.status_code == 200 and aborted.get_json()["status"] == "aborted"
    assert s3_state(svc, key) == ([], [])
    refused(
        sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=2),
        409,
        "upload_aborted",
    )


def test_a_client_completed_object_of_the_wrong_size_or_type_is_rejected_and_removed(
    client, auth, svc
):
    promised = jpeg_bytes(2 * PART + 10)
    (upload,) = initiate(client, auth, (promised, "image/jpeg")).get_json()["uploads"]
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    sent = png_bytes(2 * PART + 10)  # the promised length, another type
    parts = send_parts(client, auth, key, s3_upload_id, sent, [1, 2, 3])
    assert complete_in_s3(client, auth, key, s3_upload_id, parts).status_code == 200
    done = client.post(f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json={})
    assert done.status_code == 422 and done.get_json()["error"]["code"] == "upload_rejected"
    assert svc.records.get(upload["uploadId"]).status.value == "rejected"
    assert s3_state(svc, key) == ([], [])


def test_complete_before_anything_was_sent_is_incomplete(client, auth, svc, multipart):
    upload, _ = multipart
    done = client.post(f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json={})
    refused(done, 409, "upload_incomplete")
    assert svc.records.get(upload["uploadId"]).status.value == "pending"


def test_a_never_adopted_upload_expires_cleanly(client, auth, svc, multipart):
    upload, _ = multipart
    later = datetime.now(UTC) + timedelta(days=2)
    assert expire_overdue(svc, later) == [f"expire direct upload {upload['uploadId']}"]
    assert svc.records.get(upload["uploadId"]).status.value == "expired"
    assert s3_state(svc, upload["key"]) == ([], [])


def test_sign_requests_must_be_a_boolean(client, auth):
    refused(initiate(client, auth, (png_bytes(100), "image/png"), sign="yes"), 400, "invalid_json")


def test_flask_init_lets_the_allowed_origins_send_the_requests_from_a_browser(svc):
    rules = svc.storage.direct.client.get_bucket_cors(Bucket=svc.storage.direct.bucket)
    (rule,) = rules["CORSRules"]
    assert rule["AllowedOrigins"] == ["http://127.0.0.1:8080"]
    assert set(rule["AllowedMethods"]) == {"GET", "PUT", "POST", "DELETE", "HEAD"}
    assert "ETag" in rule["ExposeHeaders"]


def test_without_cors_origins_the_bucket_gets_no_cors_rules(tmp_path, moto_url):
    settings = make_settings(tmp_path, backend="s3", moto_url=moto_url)
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        svc.storage.direct.client.get_bucket_cors(Bucket=svc.storage.direct.bucket)


# -- the key, the lifetime and the state a signed URL is bound to -----------------------------------
def complete_call(client, auth, upload, payload=None):
    return client.post(
        f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json=payload or {}
    )


def test_initiate_names_the_exact_key_only_for_sign_requests_batches(client, auth, svc):
    small, big = png_bytes(1000), jpeg_bytes(2 * PART + 10)
    answer = initiate(client, auth, (small, "image/png"), (big, "image/jpeg"))
    put, multipart = answer.get_json()["uploads"]
    put_record, multipart_record = (svc.records.get(u["uploadId"]) for u in (put, multipart))
    assert put["key"] == svc.store.full_key(put_record.s3_key + ".upload")
    assert multipart["key"] == svc.store.full_key(multipart_record.s3_key)
    assert multipart_record.upload.s3_upload_id == "" and s3_state(svc, multipart["key"])[1] == []
    # Without signRequests (false, or absent): no key, and the gateway creates the upload.
    for flag in (False, None):
        body = {"projectId": "p1", "files": [{"filename": "f", "contentType": "image/jpeg"}]}
        body["files"][0]["size"] = len(big)
        if flag is not None:
            body["signRequests"] = flag
        (plain,) = client.post("/api/uploads/initiate", headers=auth, json=body).get_json()[
            "uploads"
        ]
        assert "key" not in plain and len(plain["multipart"]["parts"]) == 3
        assert svc.records.get(plain["uploadId"]).upload.s3_upload_id != ""
        client.post(f"/api/uploads/{plain['uploadId']}/abort", headers=auth)


def test_a_single_put_without_a_promised_sha256_signs_the_promised_type_only(client, auth, svc):
    content = png_bytes(1000)
    (upload,) = initiate(client, auth, (content, "image/png")).get_json()["uploads"]
    # The type the client names is not what is signed: the promised one is.
    presigned = signed(client, auth, method="PUT", key=upload["key"], contentType="text/html")
    assert presigned["headers"] == {"Content-Type": "image/png"}
    assert presigned["key"] == upload["key"]
    assert send(presigned, "PUT", content).status_code == 200
    done = complete_call(client, auth, upload)
    assert done.status_code == 200 and done.get_json()["status"] == "stored"
    final = upload["key"].removesuffix(".upload")
    assert s3_state(svc, final) == ([final], [])
    record = svc.records.get(upload["uploadId"])
    assert svc.storage.direct.sha256(record.s3_key) == hashlib.sha256(content).hexdigest()


def test_only_the_uploads_own_key_is_signed_any_other_is_not_found(client, auth, svc, multipart):
    upload, _ = multipart
    key = upload["key"]
    before = svc.records.get(upload["uploadId"])
    stem = key.rsplit(".", 1)[0]
    for other in (
        stem + ".png",  # the same media id, another extension
        stem + "/thumb.webp",  # a variant's key
        key.replace("/projects/p1/", "/projects/p2/"),
        "elsewhere/" + key,
        before.s3_key,  # without the store's prefix
        key + ".upload.upload",
    ):
        refused(sign(client, auth, method="POST", key=other), 404, "upload_not_found")
    assert svc.records.get(upload["uploadId"]) == before
    assert s3_state(svc, key) == ([], [])
    assert signed(client, auth, method="POST", key=key)["key"] == key


def test_a_refused_part_number_adopts_no_upload_id(client, auth, svc, multipart):
    upload, _ = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    before = svc.records.get(upload["uploadId"])
    for number in (0, 4):  # partCount is 3
        refused(
            sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=number),
            400,
            "invalid_part_range",
        )
        assert svc.records.get(upload["uploadId"]) == before
    assert before.upload.s3_upload_id == ""
    signed(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=3)
    assert svc.records.get(upload["uploadId"]).upload.s3_upload_id == s3_upload_id


def test_a_url_lives_direct_url_ttl_or_less_and_never_past_the_uploads_expiry(
    client, auth, svc, multipart, monkeypatch
):
    upload, _ = multipart
    key = upload["key"]
    ttl = svc.settings.direct_url_ttl
    assert ttl - 5 <= expires_of(signed(client, auth, method="POST", key=key)) <= ttl
    assert expires_of(signed(client, auth, method="POST", key=key, expiresIn=60)) == 60
    assert expires_of(signed(client, auth, method="POST", key=key, expiresIn=10 * ttl)) <= ttl
    assert ttl - 5 <= expires_of(signed(client, auth, method="POST", key=key, expiresIn=None))
    for bad in (0, -1, True, "60", 1.5):
        refused(
            sign(client, auth, method="POST", key=key, expiresIn=bad), 400, "invalid_sign_request"
        )
    expires_at = datetime.fromisoformat(upload["expiresAt"])
    monkeypatch.setattr(svc.direct, "clock", lambda: expires_at - timedelta(seconds=100))
    assert 99 <= expires_of(signed(client, auth, method="POST", key=key)) <= 100
    assert s3_state(svc, key) == ([], [])  # signing creates nothing


def test_signing_for_an_expired_upload_is_refused_and_changes_nothing(
    client, auth, svc, multipart, monkeypatch
):
    upload, _ = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    before = svc.records.get(upload["uploadId"])
    expires_at = datetime.fromisoformat(upload["expiresAt"])
    monkeypatch.setattr(svc.direct, "clock", lambda: expires_at + timedelta(seconds=1))
    refused(sign(client, auth, method="POST", key=key), 409, "upload_expired")
    refused(
        sign(client, auth, method="PUT", key=key, uploadId=s3_upload_id, partNumber=1),
        409,
        "upload_expired",
    )
    assert svc.records.get(upload["uploadId"]) == before  # the sweeper expires it
    assert s3_state(svc, key) == ([], [key])


def test_signing_for_a_finished_upload_is_refused(client, auth, svc):
    content = png_bytes(1000)
    (stored, rejected) = initiate(
        client, auth, (content, "image/png"), (content, "image/png")
    ).get_json()["uploads"]
    for upload, body in ((stored, content), (rejected, jpeg_bytes(len(content)))):
        presigned = signed(client, auth, method="PUT", key=upload["key"])
        assert send(presigned, "PUT", body).status_code == 200
        complete_call(client, auth, upload)
    refused(sign(client, auth, method="PUT", key=stored["key"]), 409, "upload_stored")
    refused(sign(client, auth, method="PUT", key=rejected["key"]), 409, "upload_already_rejected")
    final = stored["key"].removesuffix(".upload")
    assert s3_state(svc, final) == ([final], [])
    assert s3_state(svc, rejected["key"].removesuffix(".upload")) == ([], [])


def test_a_single_put_of_another_length_is_rejected_and_removed(client, auth, svc):
    """S3 refuses a body whose length is not the signed one; moto does not, so the gateway's
    own check is what is seen here."""
    (upload,) = initiate(client, auth, (png_bytes(1000), "image/png")).get_json()["uploads"]
    presigned = signed(client, auth, method="PUT", key=upload["key"])
    assert send(presigned, "PUT", png_bytes(999)).status_code == 200
    refused(complete_call(client, auth, upload), 422, "upload_rejected")
    assert svc.records.get(upload["uploadId"]).status.value == "rejected"
    assert s3_state(svc, upload["key"].removesuffix(".upload")) == ([], [])


def test_a_client_completed_object_missing_a_part_is_rejected_and_removed(client, auth, svc):
    content = jpeg_bytes(2 * PART + 10)
    (upload,) = initiate(client, auth, (content, "image/jpeg")).get_json()["uploads"]
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    parts = send_parts(client, auth, key, s3_upload_id, content, [1, 2])
    assert complete_in_s3(client, auth, key, s3_upload_id, parts).status_code == 200
    answer = complete_call(client, auth, upload)
    refused(answer, 422, "upload_rejected")
    assert "bytes" in answer.get_json()["error"]["message"]
    assert svc.records.get(upload["uploadId"]).status.value == "rejected"
    assert s3_state(svc, key) == ([], [])


def test_complete_of_an_open_adopted_upload_without_parts_is_refused(client, auth, svc, multipart):
    """Not completed in S3 yet: the gateway completes it only with the client's parts list."""
    upload, content = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    parts = send_parts(client, auth, key, s3_upload_id, content, [1, 2, 3])
    refused(complete_call(client, auth, upload), 400, "invalid_parts")
    assert svc.records.get(upload["uploadId"]).status.value == "pending"
    claimed = [{"partNumber": p["PartNumber"], "etag": p["ETag"]} for p in parts]
    done = complete_call(client, auth, upload, {"parts": claimed})
    assert done.status_code == 200 and done.get_json()["status"] == "stored"
    assert s3_state(svc, key) == ([key], [])


def expire_overdue(svc, now: datetime) -> list[str]:
    """A sweep at ``now`` in which only the expiry of pending uploads has work: what it did."""
    report = svc.sweeper.sweep(older_than=timedelta(days=30), now=now)
    assert report.failed == []
    return report.done


def spy_aborts(svc, monkeypatch) -> list[str]:
    calls: list[str] = []
    direct = svc.direct.direct
    real = direct.abort_multipart

    def abort_multipart(key, upload_id):
        calls.append(upload_id)
        real(key, upload_id)

    monkeypatch.setattr(direct, "abort_multipart", abort_multipart)
    return calls


def test_aborting_before_an_id_was_adopted_aborts_what_the_client_created(
    client, auth, svc, multipart, monkeypatch
):
    upload, _ = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)  # S3 has it; the gateway has not seen its id
    calls = spy_aborts(svc, monkeypatch)
    aborted = client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth)
    assert aborted.status_code == 200 and aborted.get_json()["status"] == "aborted"
    assert calls == [s3_upload_id]
    assert s3_state(svc, key) == ([], [])


def test_aborting_an_adopted_upload_aborts_that_one_only(client, auth, svc, multipart, monkeypatch):
    upload, content = multipart
    key = upload["key"]
    s3_upload_id = create(client, auth, key)
    send_parts(client, auth, key, s3_upload_id, content, [1])
    calls = spy_aborts(svc, monkeypatch)
    client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth)
    assert calls == [s3_upload_id]
    assert s3_state(svc, key) == ([], [])


def test_expiry_never_aborts_an_empty_upload_id(client, auth, svc, monkeypatch):
    content = jpeg_bytes(2 * PART + 10)
    untouched, created = initiate(
        client, auth, (content, "image/jpeg"), (content, "image/jpeg")
    ).get_json()["uploads"]
    s3_upload_id = create(client, auth, created["key"])
    calls = spy_aborts(svc, monkeypatch)
    later = datetime.now(UTC) + timedelta(days=2)
    assert sorted(expire_overdue(svc, later)) == sorted(
        f"expire direct upload {u['uploadId']}" for u in (untouched, created)
    )
    assert calls == [s3_upload_id]
    for upload in (untouched, created):
        assert svc.records.get(upload["uploadId"]).status.value == "expired"
        assert s3_state(svc, upload["key"]) == ([], [])


def test_a_stray_upload_is_kept_while_its_upload_is_pending_and_swept_after(client, auth, svc):
    content = jpeg_bytes(2 * PART + 10)
    (upload,) = initiate(client, auth, (content, "image/jpeg"), sha256=True).get_json()["uploads"]
    key = upload["key"]
    first = create(client, auth, key)
    create(client, auth, key)  # a retried create: never adopted, a stray
    parts = send_parts(client, auth, key, first, content, [1, 2, 3])
    svc.sweeper.sweep(older_than=timedelta(0), now=datetime.now(UTC) + timedelta(seconds=1))
    assert s3_state(svc, key) == ([], [key, key])  # both the client's while pending
    assert complete_in_s3(client, auth, key, first, parts).status_code == 200
    assert complete_call(client, auth, upload).get_json()["status"] == "stored"
    assert s3_state(svc, key) == ([key], [key])
    svc.sweeper.sweep(older_than=timedelta(0), now=datetime.now(UTC) + timedelta(seconds=1))
    assert s3_state(svc, key) == ([key], [])
    record = svc.records.get(upload["uploadId"])
    assert record.status.value == "stored"
    assert svc.storage.direct.sha256(record.s3_key) == hashlib.sha256(content).hexdigest()


def test_part_urls_and_status_of_an_upload_whose_id_is_not_known_yet(client, auth, svc, multipart):
    upload, content = multipart
    key, uid = upload["key"], upload["uploadId"]
    refused(
        client.get(f"/api/uploads/{uid}/parts?first=1", headers=auth), 400, "invalid_part_range"
    )
    assert client.get(f"/api/uploads/{uid}", headers=auth).get_json()["partsReceived"] == []
    s3_upload_id = create(client, auth, key)
    send_parts(client, auth, key, s3_upload_id, content, [1])
    status = client.get(f"/api/uploads/{uid}", headers=auth).get_json()
    assert [p["partNumber"] for p in status["partsReceived"]] == [1]
    more = client.get(f"/api/uploads/{uid}/parts?first=2", headers=auth)
    assert more.status_code == 200
    assert all(s3_upload_id in p["url"] for p in more.get_json()["parts"])


def test_a_body_that_is_not_a_sign_request_is_refused(client, auth):
    for body in ([], "x", {"method": "PUT"}, {"method": "PUT", "key": 3}, {"key": "k"}):
        answer = client.post("/api/uploads/sign", headers=auth, json=body)
        refused(answer, 400, "invalid_sign_request")
    for raw in ("null", "{", ""):
        answer = client.post(
            "/api/uploads/sign", headers=auth, data=raw, content_type="application/json"
        )
        refused(answer, 400, "invalid_json")
    refused(
        client.post("/api/uploads/sign", json={"method": "POST", "key": "k"}), 401, "missing_token"
    )
