"""Direct-to-S3 uploads against the moto server, with a real HTTP client doing the PUTs/POSTs.

Every case asserts the answer, the record's state, and what S3 holds: after a refusal, no
object and no multipart upload is left for that key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, timedelta

import pytest
import requests

from gateway import create_app
from gateway.direct import staging_key

from conftest import init_stores, make_settings
from support import MiB, jpeg_bytes, mp4_bytes, png_bytes

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
    )


def initiate(client, headers, files, project="p1"):
    return client.post(
        "/api/uploads/initiate", headers=headers, json={"projectId": project, "files": files}
    )


def promise(content: bytes, content_type: str, name="f", sha256=False):
    item = {"filename": name, "contentType": content_type, "size": len(content)}
    if sha256:
        item["sha256"] = hashlib.sha256(content).hexdigest()
    return item


def send_put(upload, content: bytes) -> requests.Response:
    headers = {**upload["put"]["headers"], "Content-Length": str(len(content))}
    return requests.put(upload["put"]["url"], data=content, headers=headers, timeout=60)


def send_post(upload, content: bytes) -> requests.Response:
    post = upload["post"]
    return requests.post(
        post["url"], data=post["fields"], files={"file": ("f", content)}, timeout=60
    )


def send_parts(upload, content: bytes, *, skip=()) -> list[dict]:
    size = upload["multipart"]["partSize"]
    parts = []
    for part in upload["multipart"]["parts"]:
        n = part["partNumber"]
        if n in skip:
            continue
        response = requests.put(part["url"], data=content[(n - 1) * size : n * size], timeout=60)
        assert response.status_code == 200, response.text
        parts.append({"partNumber": n, "etag": response.headers["ETag"]})
    return parts


def complete(client, headers, upload_id, parts=None):
    return client.post(
        f"/api/uploads/{upload_id}/complete",
        headers=headers,
        json={"parts": parts} if parts is not None else None,
    )


def read(svc, key):
    """The bytes of the object with this full key (as answers report it), or None."""
    store = svc.store
    try:
        return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    except store.client.exceptions.NoSuchKey:
        return None


def s3_state(svc, key):
    """(object bytes or None, open multipart uploads for the full key)."""
    store = svc.store
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return read(svc, key), [u for u in uploads if u["Key"] == key]


def store_key(svc, key):
    """The store's own key (the records' and the sweeper's) of a full key."""
    prefix = svc.store.prefix + "/"
    assert key.startswith(prefix)
    return key[len(prefix) :]


def assert_gone(svc, upload, status):
    record = svc.records.get(upload["uploadId"])
    assert record.status == status
    assert s3_state(svc, upload["s3Key"]) == (None, [])
    assert read(svc, staging_key(upload["s3Key"])) is None


def assert_stored(client, headers, svc, upload, content):
    record = svc.records.get(upload["uploadId"])
    assert record.status == "stored" and record.size == len(content)
    assert s3_state(svc, upload["s3Key"]) == (content, [])
    assert read(svc, staging_key(upload["s3Key"])) is None
    media = client.get(f"/api/media/{upload['uploadId']}", headers=headers).get_json()
    assert media["mediaId"] == upload["uploadId"] and media["size"] == len(content)
    assert media["status"] == "stored" and media["s3Key"] == upload["s3Key"]


# -- happy paths -------------------------------------------------------------------------------
def test_single_put(client, auth, svc):
    content = png_bytes(300_000)
    response = initiate(client, auth, [promise(content, "image/png", "a.png", sha256=True)])
    assert response.status_code == 201, response.get_json()
    [upload] = response.get_json()["uploads"]
    assert upload["method"] == "put" and upload["status"] == "pending" and upload["expiresAt"]
    assert upload["s3Key"].endswith(".png")
    assert svc.records.get(upload["uploadId"]).status == "pending"
    assert client.get(f"/api/media/{upload['uploadId']}", headers=auth).status_code == 404
    assert send_put(upload, content).status_code == 200
    done = complete(client, auth, upload["uploadId"])
    assert done.status_code == 200, done.get_json()
    body = done.get_json()
    assert body["status"] == "stored" and body["url"]
    assert body["media"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert_stored(client, auth, svc, upload, content)
    again = complete(client, auth, upload["uploadId"])
    assert again.status_code == 200 and again.get_json()["media"] == body["media"]


def test_post_policy(client, auth, svc):
    content = jpeg_bytes(200_000)
    [upload] = initiate(client, auth, [promise(content, "image/jpeg")]).get_json()["uploads"]
    assert send_post(upload, content).status_code in (200, 204)
    assert complete(client, auth, upload["uploadId"]).status_code == 200
    assert_stored(client, auth, svc, upload, content)


def test_three_part_multipart_with_status_on_the_way(client, auth, svc):
    content = mp4_bytes(2 * PART + 123_456)
    [upload] = initiate(client, auth, [promise(content, "video/mp4", "clip.mp4")]).get_json()[
        "uploads"
    ]
    assert upload["method"] == "multipart"
    assert upload["multipart"]["partCount"] == 3 and len(upload["multipart"]["parts"]) == 3
    parts = send_parts(upload, content, skip={3})
    status = client.get(f"/api/uploads/{upload['uploadId']}", headers=auth).get_json()
    assert status["status"] == "pending" and status["bytesReceived"] == 2 * PART
    assert [p["partNumber"] for p in status["partsReceived"]] == [1, 2]
    parts += send_parts(upload, content, skip={1, 2})
    done = complete(client, auth, upload["uploadId"], parts)
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)
    status = client.get(f"/api/uploads/{upload['uploadId']}", headers=auth).get_json()
    assert status["status"] == "stored" and status["url"]


def test_batch_mixing_put_and_multipart(client, auth, svc):
    small, big = png_bytes(50_000), mp4_bytes(PART + 10)
    response = initiate(client, auth, [promise(small, "image/png"), promise(big, "video/mp4")])
    a, b = response.get_json()["uploads"]
    assert (a["method"], b["method"]) == ("put", "multipart")
    send_put(a, small)
    parts = send_parts(b, big)
    assert complete(client, auth, a["uploadId"]).status_code == 200
    assert complete(client, auth, b["uploadId"], parts).status_code == 200
    assert_stored(client, auth, svc, a, small)
    assert_stored(client, auth, svc, b, big)
    listed = client.get("/api/media?projectId=p1", headers=auth).get_json()["items"]
    assert {m["mediaId"] for m in listed} == {a["uploadId"], b["uploadId"]}


# -- attacks -------------------------------------------------------------------------------------
def rejected(response, words):
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "upload_rejected" and words in error["message"]


def test_more_bytes_than_promised(client, auth, svc):
    content = png_bytes(100_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    bigger = content + b"x" * 5_000_000
    requests.put(
        upload["put"]["url"], data=bigger, headers={"Content-Type": "image/png"}, timeout=60
    )  # S3 refuses this; moto may not
    if read(svc, staging_key(upload["s3Key"])) is None:  # real S3 behaviour: nothing landed
        response = complete(client, auth, upload["uploadId"])
        assert response.status_code == 409
        assert svc.records.get(upload["uploadId"]).status == "pending"
        return
    response = complete(client, auth, upload["uploadId"])
    rejected(response, "were promised")
    assert_gone(svc, upload, "rejected")
    again = complete(client, auth, upload["uploadId"])
    assert again.status_code == 422 and again.get_json()["error"] == response.get_json()["error"]


def test_different_type_than_promised(client, auth, svc):
    content = jpeg_bytes(100_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_post(upload, content)
    rejected(complete(client, auth, upload["uploadId"]), "image/jpeg")
    assert_gone(svc, upload, "rejected")


def test_multipart_with_a_different_type(client, auth, svc):
    content = b"%PDF-1.7\n" + b"x" * (PART + 100)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    rejected(complete(client, auth, upload["uploadId"], parts), "application/pdf")
    assert_gone(svc, upload, "rejected")


def test_checksum_differs_from_promise(client, auth, svc):
    content = mp4_bytes(PART + 100)
    item = promise(content, "video/mp4")
    item["sha256"] = hashlib.sha256(b"something else").hexdigest()
    [upload] = initiate(client, auth, [item]).get_json()["uploads"]
    parts = send_parts(upload, content)
    rejected(complete(client, auth, upload["uploadId"], parts), "SHA-256")
    assert_gone(svc, upload, "rejected")


def test_missing_part(client, auth, svc):
    content = mp4_bytes(2 * PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content, skip={2})
    rejected(complete(client, auth, upload["uploadId"], parts), "parts 1-3 were expected")
    assert_gone(svc, upload, "rejected")


def test_extra_part_claimed(client, auth, svc):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = [*send_parts(upload, content), {"partNumber": 3, "etag": '"abc"'}]
    rejected(complete(client, auth, upload["uploadId"], parts), "do not match")
    assert_gone(svc, upload, "rejected")


def test_wrong_etags(client, auth, svc):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    parts[0]["etag"] = '"0123456789abcdef0123456789abcdef"'
    rejected(complete(client, auth, upload["uploadId"], parts), "do not match")
    assert_gone(svc, upload, "rejected")


def test_someone_elses_upload_is_404(client, auth, token, svc):
    content = png_bytes(10_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_put(upload, content)
    for headers in (
        {"Authorization": f"Bearer {token('mallory')}"},
        {"Authorization": f"Bearer {token('alice', tenant='other')}"},
    ):
        for call in (
            lambda: complete(client, headers, upload["uploadId"]),
            lambda: client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=headers),
            lambda: client.get(f"/api/uploads/{upload['uploadId']}", headers=headers),
        ):
            response = call()
            assert response.status_code == 404
            assert response.get_json()["error"]["code"] == "upload_not_found"
    assert svc.records.get(upload["uploadId"]).status == "pending"
    assert complete(client, auth, upload["uploadId"]).status_code == 200


@pytest.mark.parametrize(
    "claims, project, code",
    [
        ({"projects": ["p1"]}, "p2", "project_forbidden"),
    ],
)
def test_project_the_token_does_not_allow(client, token, svc, claims, project, code):
    headers = {"Authorization": f"Bearer {token(**claims)}"}
    response = initiate(client, headers, [promise(png_bytes(10_000), "image/png")], project=project)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == code
    from support import record_ids

    assert record_ids(svc.records) == []
    assert svc.store.client.list_multipart_uploads(Bucket=svc.store.bucket).get("Uploads", []) == []


def test_tenant_scopes_direct_keys(client, token, svc):
    headers = {"Authorization": f"Bearer {token(tenant='acme')}"}
    [upload] = initiate(client, headers, [promise(png_bytes(10_000), "image/png")]).get_json()[
        "uploads"
    ]
    assert upload["s3Key"].startswith("uploads/acme/projects/p1/media/")


@pytest.mark.parametrize(
    "item, status, code",
    [
        ({"filename": "a", "contentType": "application/pdf", "size": 10}, 415, "unsupported_type"),
        ({"filename": "a", "contentType": "image/png", "size": 0}, 422, "invalid_size"),
        ({"filename": "a", "contentType": "image/png", "size": "10"}, 422, "invalid_size"),
        ({"filename": "a", "contentType": "image/png", "size": 6 * 1024**3}, 413, "too_large"),
        (
            {"filename": "a", "contentType": "image/png", "size": 10, "sha256": "xyz"},
            400,
            "invalid_sha256",
        ),
    ],
)
def test_initiate_validation_creates_nothing(client, auth, svc, item, status, code):
    good = promise(mp4_bytes(PART + 1), "video/mp4")  # would start a multipart upload
    response = initiate(client, auth, [good, item])
    assert response.status_code == status and response.get_json()["error"]["code"] == code
    from support import record_ids

    assert record_ids(svc.records) == []
    assert svc.store.client.list_multipart_uploads(Bucket=svc.store.bucket).get("Uploads", []) == []


def test_batch_cap_and_bad_json(client, auth):
    files = [promise(png_bytes(100), "image/png")] * 21
    assert initiate(client, auth, files).status_code == 413
    bad = client.post(
        "/api/uploads/initiate",
        headers={**auth, "Content-Type": "application/json"},
        data=b"{not json",
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_json"


def test_complete_before_any_bytes_is_409_and_stays_pending(client, auth, svc):
    [upload] = initiate(client, auth, [promise(png_bytes(1000), "image/png")]).get_json()["uploads"]
    response = complete(client, auth, upload["uploadId"])
    assert (
        response.status_code == 409 and response.get_json()["error"]["code"] == "upload_incomplete"
    )
    assert svc.records.get(upload["uploadId"]).status == "pending"


def test_complete_after_abort(client, auth, svc):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    aborted = client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth)
    assert aborted.status_code == 200 and aborted.get_json()["status"] == "aborted"
    response = complete(client, auth, upload["uploadId"], parts)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "upload_aborted"
    assert_gone(svc, upload, "aborted")


def test_abort_after_single_put_removes_the_object(client, auth, svc):
    content = png_bytes(10_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_put(upload, content)
    assert client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth).status_code == 200
    assert_gone(svc, upload, "aborted")


def test_complete_after_expiry(client, auth, svc):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    real_clock = svc.direct.clock
    svc.direct.clock = lambda: real_clock() + timedelta(hours=2)
    response = complete(client, auth, upload["uploadId"], parts)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "upload_expired"
    assert_gone(svc, upload, "expired")


def test_sweep_expires_overdue_pending_uploads(app, client, auth, svc):
    from datetime import datetime

    def sweep(svc, **kwargs):
        report = svc.sweeper.sweep(**kwargs)
        assert report.failed == []
        return report.done

    big, small = mp4_bytes(PART + 10), png_bytes(10_000)
    a, b = initiate(
        client, auth, [promise(big, "video/mp4"), promise(small, "image/png")]
    ).get_json()["uploads"]
    send_parts(a, big)
    send_put(b, small)
    assert not [line for line in sweep(svc, older_than=timedelta(hours=24)) if "expire" in line]
    later = datetime.now(UTC) + timedelta(hours=2)
    report = sweep(svc, older_than=timedelta(hours=24), now=later)
    assert sorted(line for line in report if "expire" in line) == sorted(
        f"expire direct upload {u['uploadId']}" for u in (a, b)
    )
    assert_gone(svc, a, "expired")
    assert_gone(svc, b, "expired")


def test_embedded_mode_answers_501(tmp_path):
    app = create_app(make_settings(tmp_path, backend="local"))
    init_stores(app.extensions["gateway"])
    with app.app_context():
        from gateway.auth import mint_token

        headers = {"Authorization": f"Bearer {mint_token('alice')}"}
    response = initiate(app.test_client(), headers, [promise(png_bytes(100), "image/png")])
    assert response.status_code == 501
    assert response.get_json()["error"]["code"] == "direct_uploads_unavailable"


# -- review findings ---------------------------------------------------------------------------
def sweep_now(svc, older_than=timedelta(0)):
    from datetime import datetime

    report = svc.sweeper.sweep(older_than=older_than, now=datetime.now(UTC) + timedelta(seconds=1))
    assert report.failed == []
    return report.done


@pytest.mark.parametrize("send", [send_put, send_post], ids=["put", "post"])
def test_single_upload_cannot_be_overwritten_after_complete(client, auth, svc, send):
    content = png_bytes(300_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    assert upload["s3Key"].endswith(".png")
    assert send(upload, content).status_code in (200, 204)
    done = complete(client, auth, upload["uploadId"])
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)
    # The URL is still valid until expiresAt: other bytes of the same size and type.
    other = png_bytes(300_000, seed=5)
    assert other != content
    assert send(upload, other).status_code in (200, 204)
    assert read(svc, upload["s3Key"]) == content
    assert read(svc, staging_key(upload["s3Key"])) == other  # landed beside it, not on it
    again = complete(client, auth, upload["uploadId"])
    assert again.status_code == 200 and again.get_json()["media"] == done.get_json()["media"]
    assert read(svc, upload["s3Key"]) == content
    # The sweeper removes the stale staging object of a stored record, never the object.
    assert sweep_now(svc) == [
        f"delete unrecorded object {staging_key(store_key(svc, upload['s3Key']))}"
    ]
    assert_stored(client, auth, svc, upload, content)


def test_staging_object_of_a_pending_upload_is_live_for_the_sweeper(client, auth, svc):
    content = png_bytes(50_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_put(upload, content)
    assert read(svc, staging_key(upload["s3Key"])) == content
    assert sweep_now(svc) == []
    assert read(svc, staging_key(upload["s3Key"])) == content
    assert complete(client, auth, upload["uploadId"]).status_code == 200
    assert_stored(client, auth, svc, upload, content)


def test_sweep_deletes_stale_staging_of_a_rejected_upload(client, auth, svc):
    content = png_bytes(50_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    from gateway.lifecycle import Status

    record = svc.records.get(upload["uploadId"])
    svc.records.update(
        record.evolve(status=Status.REJECTED), expected=record
    )  # as if its cleanup had failed
    send_put(upload, content)
    key = staging_key(upload["s3Key"])
    assert sweep_now(svc, older_than=timedelta(hours=1)) == []  # not stale yet
    assert sweep_now(svc) == [f"delete unrecorded object {store_key(svc, key)}"]
    assert read(svc, key) is None


@pytest.mark.parametrize("method", ["put", "multipart"])
def test_complete_retried_after_a_failure_past_the_s3_step(client, auth, svc, monkeypatch, method):
    from gateway.errors import StorageError

    content = mp4_bytes(2 * PART + 10) if method == "multipart" else mp4_bytes(100_000)
    [upload] = initiate(client, auth, [promise(content, "video/mp4", sha256=True)]).get_json()[
        "uploads"
    ]
    assert upload["method"] == method
    parts = send_parts(upload, content) if method == "multipart" else None
    if method == "put":
        send_put(upload, content)
    direct = svc.direct.direct
    real = direct.read_head
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("Object store error while reading an object: 500.")
        return real(*args, **kwargs)

    monkeypatch.setattr(direct, "read_head", flaky)
    first = complete(client, auth, upload["uploadId"], parts)
    assert first.status_code == 502, first.get_json()
    assert svc.records.get(upload["uploadId"]).status == "pending"
    retry = complete(client, auth, upload["uploadId"], parts)
    assert retry.status_code == 200, retry.get_json()
    assert retry.get_json()["status"] == "stored"
    assert_stored(client, auth, svc, upload, content)


def test_sweep_leaves_live_direct_multipart_uploads(client, auth, svc):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    # moto dates every multipart upload 2010: "older than 0" covers it.
    assert sweep_now(svc) == []
    assert len(s3_state(svc, upload["s3Key"])[1]) == 1
    done = complete(client, auth, upload["uploadId"], parts)
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)


def signed_headers(url: str) -> set[str]:
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    assert query.get("X-Amz-Algorithm") == ["AWS4-HMAC-SHA256"], url  # SigV4
    return set(query["X-Amz-SignedHeaders"][0].split(";"))


def test_presigned_urls_bind_length_type_and_checksum(client, auth, svc, monkeypatch):
    direct = svc.direct.direct
    presigned = []
    real = direct.client.generate_presigned_url

    def spy(operation, **kwargs):
        presigned.append((operation, kwargs["Params"]))
        return real(operation, **kwargs)

    monkeypatch.setattr(direct.client, "generate_presigned_url", spy)
    small, big = png_bytes(10_000), mp4_bytes(2 * PART + 123)
    a, b = initiate(
        client, auth, [promise(small, "image/png", sha256=True), promise(big, "video/mp4")]
    ).get_json()["uploads"]
    assert {"content-length", "content-type", "x-amz-checksum-sha256"} <= signed_headers(
        a["put"]["url"]
    )
    assert a["put"]["headers"]["Content-Length"] == str(len(small))
    parts = b["multipart"]["parts"]
    assert [p["size"] for p in parts] == [PART, PART, 123]
    for part in parts:
        assert "content-length" in signed_headers(part["url"])
    assert [params["ContentLength"] for op, params in presigned if op == "upload_part"] == [
        PART,
        PART,
        123,
    ]
    uploaded = send_parts(b, big)
    assert complete(client, auth, b["uploadId"], uploaded).status_code == 200
    assert_stored(client, auth, svc, b, big)


def test_oversized_chunked_json_is_our_413(client, auth, svc):
    import io
    import json

    from support import record_ids

    body = json.dumps(
        {
            "projectId": "p1",
            "files": [promise(png_bytes(100), "image/png")],
            "padding": "x" * 300_000,
        }
    ).encode()
    response = client.post(
        "/api/uploads/initiate",
        input_stream=io.BytesIO(body),
        headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413 and response.is_json, response.data[:200]
    assert response.get_json()["error"]["code"] == "too_large"
    assert record_ids(svc.records) == []


def test_chunked_complete_body_is_parsed(client, auth, svc):
    import io
    import json

    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)

    def chunked(body: bytes):
        return client.post(
            f"/api/uploads/{upload['uploadId']}/complete",
            input_stream=io.BytesIO(body),
            headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    bad = chunked(b"{not json")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_json"
    done = chunked(json.dumps({"parts": parts}).encode())
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)


def test_token_narrowed_to_other_projects_cannot_touch_the_upload(client, auth, token, svc):
    content = png_bytes(10_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_put(upload, content)
    headers = {"Authorization": f"Bearer {token('alice', projects=['p2'])}"}
    for call in (
        lambda: complete(client, headers, upload["uploadId"]),
        lambda: client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=headers),
        lambda: client.get(f"/api/uploads/{upload['uploadId']}", headers=headers),
    ):
        response = call()
        assert response.status_code == 404, response.get_json()
        assert response.get_json()["error"]["code"] == "upload_not_found"
    assert svc.records.get(upload["uploadId"]).status == "pending"
    narrowed_ok = {"Authorization": f"Bearer {token('alice', projects=['p1'])}"}
    assert complete(client, narrowed_ok, upload["uploadId"]).status_code == 200
    assert_stored(client, auth, svc, upload, content)


def test_object_replaced_during_checks_is_409_and_stays_pending(client, auth, svc, monkeypatch):
    """The staging object changes between the gateway's HeadObject and its reads: the reads are
    pinned to the first ETag, so nothing is copied; the upload stays pending for a retry."""
    content, other = png_bytes(40_000, seed=1), png_bytes(40_000, seed=2)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    send_put(upload, content)
    direct = svc.direct.direct
    original = direct.read_head

    def swap_then_read(*args, **kwargs):
        monkeypatch.setattr(direct, "read_head", original)
        assert send_put(upload, other).status_code == 200  # a second PUT with the same URL
        return original(*args, **kwargs)

    monkeypatch.setattr(direct, "read_head", swap_then_read)
    response = complete(client, auth, upload["uploadId"])
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["code"] == "upload_changed"
    assert svc.records.get(upload["uploadId"]).status == "pending"
    assert s3_state(svc, upload["s3Key"]) == (None, [])  # nothing reached the final key
    done = complete(client, auth, upload["uploadId"])  # the retry checks what is there now
    assert done.status_code == 200
    assert_stored(client, auth, svc, upload, other)


@pytest.mark.parametrize("body", [None, {"parts": "all of them"}, {"parts": [{"partNumber": "1"}]}])
def test_malformed_parts_list_is_400_and_stays_pending(client, auth, svc, body):
    content = mp4_bytes(PART + 10)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    send_parts(upload, content)
    response = client.post(f"/api/uploads/{upload['uploadId']}/complete", headers=auth, json=body)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_parts"
    assert svc.records.get(upload["uploadId"]).status == "pending"
    assert s3_state(svc, upload["s3Key"])[0] is None  # not completed
    aborted = client.post(f"/api/uploads/{upload['uploadId']}/abort", headers=auth)
    assert aborted.status_code == 200
    assert_gone(svc, upload, "aborted")
