"""Direct-to-S3 uploads against the moto server (and, for what the store does, Ceph's radosgw),
with a real HTTP client doing the PUTs/POSTs.

Every case asserts the answer, the record's state, and what S3 holds: after a refusal, no
object and no multipart upload is left for that key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, timedelta

import pytest
import requests

from gateway import create_app
from gateway.media.lifecycle import Status
from gateway.storage.keys import staging_key

from conftest import also_on_ceph, backend_settings, init_stores, make_settings
from support import MiB, jpeg_bytes, mp4_bytes, png_bytes

PART = 5 * MiB


@pytest.fixture(params=["s3", "s3+dynamodb"])
def backend(request):
    return request.param


ON_CEPH = also_on_ceph("s3", "s3+dynamodb")  # what the store does: on Ceph as well


@pytest.fixture
def settings(tmp_path, backend, request):
    return backend_settings(
        request, tmp_path, backend, direct_part_size=PART, direct_single_put_max=PART
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
@ON_CEPH
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


@ON_CEPH
def test_post_policy(client, auth, svc):
    content = jpeg_bytes(200_000)
    [upload] = initiate(client, auth, [promise(content, "image/jpeg")]).get_json()["uploads"]
    assert send_post(upload, content).status_code in (200, 204)
    assert complete(client, auth, upload["uploadId"]).status_code == 200
    assert_stored(client, auth, svc, upload, content)


@ON_CEPH
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


@ON_CEPH
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


@pytest.mark.parametrize(
    "kind, promised, recorded",
    [
        ("wav", "audio/x-wav", "audio/wav"),  # another name of the same type: the gateway's
        ("webm", "video/webm", "video/webm"),  # a browser's name for an audio-only WebM
        ("webm", "audio/webm", "audio/webm"),
    ],
)
def test_audio_promised_by_another_name_or_as_its_containers_video(
    client, auth, svc, kind, promised, recorded
):
    """The worker settles a container's type by its streams: a promise of the container's
    other type is kept until then."""
    import media_samples

    content = media_samples.audio(kind, 0.5)
    [upload] = initiate(client, auth, [promise(content, promised, "rec")]).get_json()["uploads"]
    assert send_put(upload, content).status_code == 200
    done = complete(client, auth, upload["uploadId"])
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["media"]["contentType"] == recorded
    assert_stored(client, auth, svc, upload, content)


def test_audio_promised_as_another_audio_type_is_rejected(client, auth, svc):
    import media_samples

    content = media_samples.audio("flac", 0.5)
    [upload] = initiate(client, auth, [promise(content, "audio/mpeg")]).get_json()["uploads"]
    send_put(upload, content)
    rejected(complete(client, auth, upload["uploadId"]), "The content is audio/flac")
    assert_gone(svc, upload, "rejected")


def test_multipart_with_a_different_type(client, auth, svc):
    content = b"%PDF-1.7\n" + b"x" * (PART + 100)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    parts = send_parts(upload, content)
    rejected(complete(client, auth, upload["uploadId"], parts), "application/pdf")
    assert_gone(svc, upload, "rejected")


@ON_CEPH
def test_checksum_differs_from_promise(client, auth, svc):
    content = mp4_bytes(PART + 100)
    item = promise(content, "video/mp4")
    item["sha256"] = hashlib.sha256(b"something else").hexdigest()
    [upload] = initiate(client, auth, [item]).get_json()["uploads"]
    parts = send_parts(upload, content)
    rejected(complete(client, auth, upload["uploadId"], parts), "SHA-256")
    assert_gone(svc, upload, "rejected")


@ON_CEPH
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


@ON_CEPH
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


@ON_CEPH
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
        from gateway.http.auth import mint_token

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


@ON_CEPH
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


@ON_CEPH
def test_sweep_deletes_stale_staging_of_a_rejected_upload(client, auth, svc):
    content = png_bytes(50_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
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


@ON_CEPH
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


@ON_CEPH
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


# -- what the final object carries ------------------------------------------------------------
EVIL_HEADERS = {
    "Content-Disposition": "attachment; filename=evil.html",
    "Cache-Control": "public, max-age=99999",
    "Content-Encoding": "gzip",
    "Content-Language": "xx",
    "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
    "x-amz-meta-evil": "1",
    "x-amz-website-redirect-location": "/evil.html",
    "x-amz-storage-class": "STANDARD_IA",
}
HEAD_FIELDS_NOT_CHOSEN = (
    "CacheControl",
    "ContentEncoding",
    "ContentLanguage",
    "Expires",
    "WebsiteRedirectLocation",
    "StorageClass",
)


def head_object(svc, key):
    head = svc.store.client.head_object(Bucket=svc.store.bucket, Key=key)
    head.pop("ResponseMetadata")
    return head


def send_put_with(upload, content, extra):
    headers = {
        **upload["put"]["headers"],
        "Content-Length": str(len(content)),
        "x-amz-acl": "public-read",
        **extra,
    }
    return requests.put(upload["put"]["url"], data=content, headers=headers, timeout=60)


def send_post_with(upload, content, extra):
    post = upload["post"]
    return requests.post(
        post["url"],
        data={**post["fields"], "acl": "public-read", **extra},
        files={"file": ("f", content)},
        timeout=60,
    )


def public_grants(svc, key):
    acl = svc.store.client.get_object_acl(Bucket=svc.store.bucket, Key=key)
    return [g for g in acl["Grants"] if "AllUsers" in g["Grantee"].get("URI", "")]


@ON_CEPH
@pytest.mark.parametrize(
    "send, sha256",
    [(send_put_with, True), (send_put_with, False), (send_post_with, False)],
    ids=["put-sha256", "put", "post"],
)
def test_final_object_carries_only_the_gateways_headers(client, auth, svc, backend, send, sha256):
    content = png_bytes(60_000)
    item = promise(content, "image/png", "my photo.png", sha256=sha256)
    [upload] = initiate(client, auth, [item]).get_json()["uploads"]
    extra = dict(EVIL_HEADERS)
    if backend == "ceph":  # Ceph refuses a storage class its zone does not define (400)
        del extra["x-amz-storage-class"]
    sent = send(upload, content, extra)
    if backend == "ceph" and send is send_post_with:
        # Ceph, as AWS, refuses a form field its policy does not name: nothing is staged.
        assert sent.status_code == 403 and "<Code>AccessDenied</Code>" in sent.text
        assert read(svc, staging_key(upload["s3Key"])) is None
        return
    assert sent.status_code in (200, 204), sent.text
    staged = head_object(svc, staging_key(upload["s3Key"]))  # moto kept them all: the test bites
    assert staged["ContentDisposition"] == "attachment; filename=evil.html"
    assert staged["CacheControl"] == "public, max-age=99999"
    assert staged["ContentEncoding"] == "gzip" and staged["Metadata"] == {"evil": "1"}
    assert public_grants(svc, staging_key(upload["s3Key"])) != []
    done = complete(client, auth, upload["uploadId"])
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)
    final = head_object(svc, upload["s3Key"])
    expected = {
        "media-id": upload["uploadId"],
        "project-id": "p1",
        "owner": "alice",
        "original-name": "my%20photo.png",
    }
    if sha256:
        expected["sha256"] = hashlib.sha256(content).hexdigest()
    assert final["Metadata"] == expected
    assert final["ContentType"] == "image/png"
    assert final["ContentDisposition"] == (
        "inline; filename=\"my photo.png\"; filename*=UTF-8''my%20photo.png"
    )
    assert final["ContentLength"] == len(content)
    assert {f: final[f] for f in HEAD_FIELDS_NOT_CHOSEN if f in final} == {}
    assert public_grants(svc, upload["s3Key"]) == []


@ON_CEPH
def test_tags_the_client_added_do_not_reach_the_final_object(client, auth, svc):
    content = png_bytes(20_000)
    [upload] = initiate(client, auth, [promise(content, "image/png")]).get_json()["uploads"]
    assert send_put_with(upload, content, {"x-amz-tagging": "expire=now"}).status_code == 200
    assert complete(client, auth, upload["uploadId"]).status_code == 200
    assert_stored(client, auth, svc, upload, content)
    tags = svc.store.client.get_object_tagging(Bucket=svc.store.bucket, Key=upload["s3Key"])
    assert tags["TagSet"] == []


# -- initiate amplification bounds ------------------------------------------------------------
@pytest.fixture
def custom(tmp_path, backend, moto_url):
    """An app with some settings overridden: (client, svc, headers_for(sub, **claims))."""

    def make(**overrides):
        settings = make_settings(
            tmp_path,
            backend=backend,
            moto_url=moto_url,
            direct_part_size=PART,
            direct_single_put_max=PART,
            **overrides,
        )
        app = create_app(settings)
        app.config["TESTING"] = True
        init_stores(app.extensions["gateway"])

        def headers_for(sub="alice", **claims):
            from gateway.http.auth import mint_token

            with app.app_context():
                return {"Authorization": f"Bearer {mint_token(sub, **claims)}"}

        return app.test_client(), app.extensions["gateway"], headers_for

    return make


def open_uploads(svc):
    return svc.store.client.list_multipart_uploads(Bucket=svc.store.bucket).get("Uploads", [])


def sized(size, content_type="video/mp4"):
    return {"filename": "f", "contentType": content_type, "size": size}


def test_batch_bytes_limit_is_exact(custom):
    from support import leftovers, record_ids

    client, svc, headers_for = custom(direct_max_batch_bytes=30 * MiB, direct_max_bytes=30 * MiB)
    auth = headers_for()
    over = initiate(client, auth, [sized(10 * MiB), sized(10 * MiB), sized(10 * MiB + 1)])
    assert over.status_code == 413, over.get_json()
    assert over.get_json()["error"]["code"] == "too_large"
    assert leftovers(svc) == {"objects": [], "pending_uploads": [], "records": []}
    assert open_uploads(svc) == []
    one = initiate(client, auth, [sized(30 * MiB + 1)])  # one file over the batch limit too
    assert one.status_code == 413 and one.get_json()["error"]["code"] == "too_large"
    assert record_ids(svc.records) == [] and open_uploads(svc) == []
    at = initiate(client, auth, [sized(10 * MiB), sized(10 * MiB), sized(10 * MiB)])
    assert at.status_code == 201, at.get_json()
    uploads = at.get_json()["uploads"]
    assert [u["method"] for u in uploads] == ["multipart"] * 3
    assert sorted(record_ids(svc.records)) == sorted(u["uploadId"] for u in uploads)
    assert sorted(u["Key"] for u in open_uploads(svc)) == sorted(u["s3Key"] for u in uploads)


def test_pending_uploads_per_caller_are_capped(custom):
    from support import record_ids

    client, svc, headers_for = custom(direct_max_pending=3)
    alice, bob = headers_for("alice"), headers_for("bob")
    alice_elsewhere = headers_for("alice", tenant="other")
    small = png_bytes(10_000)
    big = mp4_bytes(PART + 10)  # a refused request must not start its multipart upload

    def refused(headers, files):
        before_records, before_uploads = sorted(record_ids(svc.records)), open_uploads(svc)
        response = initiate(client, headers, files)
        assert response.status_code == 429, response.get_json()
        assert response.get_json()["error"]["code"] == "too_many_pending"
        assert response.headers["Retry-After"] == "60"
        assert sorted(record_ids(svc.records)) == before_records
        assert open_uploads(svc) == before_uploads

    first = initiate(client, alice, [promise(small, "image/png"), promise(small, "image/png")])
    assert first.status_code == 201
    a1, a2 = first.get_json()["uploads"]
    refused(alice, [promise(big, "video/mp4"), promise(small, "image/png")])  # 2 + 2 > 3
    third = initiate(client, alice, [promise(big, "video/mp4")])  # exactly 3 pending
    assert third.status_code == 201, third.get_json()
    [a3] = third.get_json()["uploads"]
    refused(alice, [promise(big, "video/mp4")])
    for other in (bob, alice_elsewhere):  # per caller: another sub, another tenant
        response = initiate(client, other, [promise(small, "image/png")] * 3)
        assert response.status_code == 201, response.get_json()
        refused(other, [promise(big, "video/mp4")])
    send_put(a1, small)
    assert complete(client, alice, a1["uploadId"]).status_code == 200  # stored: not pending
    again = initiate(client, alice, [promise(small, "image/png")])
    assert again.status_code == 201, again.get_json()
    refused(alice, [promise(big, "video/mp4")])
    aborted = client.post(f"/api/uploads/{a3['uploadId']}/abort", headers=alice)
    assert aborted.status_code == 200
    assert_gone(svc, a3, "aborted")
    assert initiate(client, alice, [promise(big, "video/mp4")]).status_code == 201
    refused(alice, [promise(big, "video/mp4")])
    assert svc.records.get(a2["uploadId"]).status == "pending"


def test_part_urls_come_in_pages(custom):
    from urllib.parse import parse_qs, urlsplit

    client, svc, headers_for = custom(direct_part_urls_per_page=2)
    auth = headers_for()
    content = mp4_bytes(4 * PART + 123)
    [upload] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    uid = upload["uploadId"]
    assert upload["multipart"]["partCount"] == 5 and upload["multipart"]["partSize"] == PART
    pages = [upload["multipart"]["parts"]]

    def page(query, headers=auth):
        return client.get(f"/api/uploads/{uid}/parts?{query}", headers=headers)

    for query in ("first=3&count=2", "first=5&count=2"):
        response = page(query)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["uploadId"] == uid
        pages.append(response.get_json()["parts"])
    assert [[(p["partNumber"], p["size"]) for p in ps] for ps in pages] == [
        [(1, PART), (2, PART)],
        [(3, PART), (4, PART)],
        [(5, 123)],
    ]
    every_part = [p for ps in pages for p in ps]
    for part in every_part:
        assert "content-length" in signed_headers(part["url"])
        query = parse_qs(urlsplit(part["url"]).query)
        assert query["partNumber"] == [str(part["partNumber"])]
        assert urlsplit(part["url"]).path.endswith("/" + upload["s3Key"])
    default = page("first=3")  # count defaults to a page
    assert [p["partNumber"] for p in default.get_json()["parts"]] == [3, 4]
    for query in ("first=0", "first=6", "first=-1", "count=0", "count=3", "first=1&count=-1"):
        response = page(query)
        assert response.status_code == 400, (query, response.get_json())
        assert response.get_json()["error"]["code"] == "invalid_part_range"
    for query in ("first=x", "count=1.5", "first=", "first=2.0"):
        response = page(query)
        assert response.status_code == 400, (query, response.get_json())
        assert response.get_json()["error"]["code"] == "invalid_part_range"
    for headers in (headers_for("mallory"), headers_for("alice", tenant="other")):
        response = page("first=3&count=2", headers)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "upload_not_found"
    parts = send_parts({"multipart": {**upload["multipart"], "parts": every_part}}, content)
    done = complete(client, auth, uid, parts)
    assert done.status_code == 200, done.get_json()
    assert_stored(client, auth, svc, upload, content)
    stored = page("first=1&count=1")
    assert stored.status_code == 409 and stored.get_json()["error"]["code"] == "upload_stored"
    record = svc.records.get(uid)  # processed since: still 409, whatever the later status
    assert svc.records.update(record.evolve(status=Status.READY), expected=record) is not None
    ready = page("first=1&count=1")
    assert ready.status_code == 409 and ready.get_json()["error"]["code"] == "upload_stored"
    # A single PUT/POST has no parts; an aborted upload has none left.
    [single] = initiate(client, auth, [promise(png_bytes(1000), "image/png")]).get_json()["uploads"]
    response = client.get(f"/api/uploads/{single['uploadId']}/parts?first=1", headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_part_range"
    [other] = initiate(client, auth, [promise(content, "video/mp4")]).get_json()["uploads"]
    assert client.post(f"/api/uploads/{other['uploadId']}/abort", headers=auth).status_code == 200
    response = client.get(f"/api/uploads/{other['uploadId']}/parts?first=3", headers=auth)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "upload_aborted"
    assert_gone(svc, other, "aborted")


# -- complete racing abort -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, step",
    [
        ("multipart", "list_parts"),  # aborted before the gateway lists the parts
        ("multipart", "complete_multipart"),  # ... between listing and completing
        ("multipart", "head"),  # ... after S3 completed it (the object is deleted)
        ("put", "head"),  # ... before the staging object is looked at
        ("put", "read_head"),  # ... while its first bytes are sniffed
        ("put", "copy"),  # ... before the checked version is copied
    ],
)
def test_complete_racing_abort_is_409_upload_aborted(client, auth, svc, monkeypatch, method, step):
    from gateway.media.principal import Principal

    content = mp4_bytes(PART + 10) if method == "multipart" else png_bytes(50_000)
    kind = "video/mp4" if method == "multipart" else "image/png"
    [upload] = initiate(client, auth, [promise(content, kind, sha256=True)]).get_json()["uploads"]
    assert upload["method"] == method
    parts = send_parts(upload, content) if method == "multipart" else None
    if method == "put":
        assert send_put(upload, content).status_code == 200
    direct = svc.direct.direct
    real = getattr(direct, step)
    aborts = []

    def abort_first(*args, **kwargs):
        if not aborts:
            alice = Principal(subject="alice", tenant="", projects=None)
            aborts.append(svc.direct.abort(alice, upload["uploadId"]).status)
        return real(*args, **kwargs)

    monkeypatch.setattr(direct, step, abort_first)
    response = complete(client, auth, upload["uploadId"], parts)
    assert aborts == ["aborted"]
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["code"] == "upload_aborted"
    assert_gone(svc, upload, "aborted")
    again = complete(client, auth, upload["uploadId"], parts)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "upload_aborted"
    assert_gone(svc, upload, "aborted")


# -- strict identifiers in initiate ---------------------------------------------------------------
SHA = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    "project, item, status, code",
    [
        ("p1\n", {}, 400, "invalid_project_id"),
        ("p1", {"sha256": SHA + "\n"}, 400, "invalid_sha256"),
        ("p1", {"sha256": SHA.upper()}, 400, "invalid_sha256"),
        ("p1", {"sha256": SHA[:-1]}, 400, "invalid_sha256"),
        ("p1", {"size": True}, 422, "invalid_size"),
        ("p1", {"size": False}, 422, "invalid_size"),
        ("p1", {"size": 1.5}, 422, "invalid_size"),
        ("p1", {"size": 10.0}, 422, "invalid_size"),
        ("p1", {"size": "10"}, 422, "invalid_size"),
        ("p1", {"size": 0}, 422, "invalid_size"),
        ("p1", {"size": -1}, 422, "invalid_size"),
        ("p1", {"size": None}, 422, "invalid_size"),
    ],
)
def test_initiate_identifiers_are_strict(client, auth, svc, project, item, status, code):
    from support import leftovers

    good = promise(mp4_bytes(PART + 1), "video/mp4")  # would start a multipart upload
    bad = {"filename": "a.png", "contentType": "image/png", "size": 10, **item}
    response = initiate(client, auth, [good, bad], project=project)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert leftovers(svc) == {"objects": [], "pending_uploads": [], "records": []}
    assert open_uploads(svc) == []
    fixed = {**bad, "size": 10, "sha256": SHA}  # the same batch, identifiers fixed, is accepted
    assert initiate(client, auth, [good, fixed]).status_code == 201


# -- rights: admins of the tenant, nobody else ---------------------------------------------------
def test_admin_of_the_tenant_may_act_on_others_uploads(client, token, svc):
    def bearer(sub, **claims):
        return {"Authorization": f"Bearer {token(sub, **claims)}"}

    alice = bearer("alice", tenant="acme")
    admin = bearer("boss", tenant="acme", admin=True)
    content, big = png_bytes(10_000), mp4_bytes(PART + 10)
    a, b = initiate(
        client, alice, [promise(content, "image/png"), promise(big, "video/mp4")]
    ).get_json()["uploads"]
    send_put(a, content)
    parts = send_parts(b, big)
    for headers in (
        bearer("mallory", tenant="acme"),  # same tenant, not an admin
        bearer("boss", admin=True),  # an admin, but of no tenant
        bearer("boss", tenant="other", admin=True),  # an admin of another tenant
        bearer("alice", tenant="other", admin=True),  # ... even under the same subject
        bearer("boss", tenant="acme", admin=True, projects=["p2"]),  # not allowed in p1
    ):
        for upload, body in ((a, None), (b, parts)):
            uid = upload["uploadId"]
            for call in (
                lambda: complete(client, headers, uid, body),
                lambda: client.post(f"/api/uploads/{uid}/abort", headers=headers),
                lambda: client.get(f"/api/uploads/{uid}", headers=headers),
                lambda: client.get(f"/api/uploads/{uid}/parts?first=1", headers=headers),
            ):
                response = call()
                assert response.status_code == 404, response.get_json()
                assert response.get_json()["error"]["code"] == "upload_not_found"
    assert read(svc, staging_key(a["s3Key"])) == content  # nothing was touched
    assert svc.records.get(a["uploadId"]).status == "pending"
    assert svc.records.get(b["uploadId"]).status == "pending"
    assert len(s3_state(svc, b["s3Key"])[1]) == 1
    seen = client.get(f"/api/uploads/{b['uploadId']}", headers=admin)
    assert seen.status_code == 200, seen.get_json()
    assert seen.get_json()["status"] == "pending" and seen.get_json()["bytesReceived"] == len(big)
    more = client.get(f"/api/uploads/{b['uploadId']}/parts?first=2", headers=admin)
    assert more.status_code == 200 and [p["partNumber"] for p in more.get_json()["parts"]] == [2]
    done = complete(client, admin, a["uploadId"])
    assert done.status_code == 200, done.get_json()
    assert svc.records.get(a["uploadId"]).owner == "alice"  # still alice's
    assert_stored(client, alice, svc, a, content)
    aborted = client.post(f"/api/uploads/{b['uploadId']}/abort", headers=admin)
    assert aborted.status_code == 200 and aborted.get_json()["status"] == "aborted"
    assert_gone(svc, b, "aborted")
