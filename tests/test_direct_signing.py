"""Direct uploads whose client sends every S3 request itself, each signed by the gateway
(``signRequests``: Uppy's @uppy/aws-s3 ``signRequest``), against the moto server. The S3 requests
are sent with ``requests`` exactly as the plugin sends them: the signed URL and headers only.
Every refusal leaves the record as it was and nothing in S3 for the key."""

from __future__ import annotations

import hashlib
import re

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
    answer = sign(client, auth, **request)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


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
    from urllib.parse import parse_qs, urlsplit

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
    from datetime import UTC, datetime, timedelta

    upload, _ = multipart
    later = datetime.now(UTC) + timedelta(days=2)
    assert svc.direct.expire_overdue(now=later) == [upload["uploadId"]]
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
