"""The two S3 implementations the suite runs on, side by side: moto and Ceph's radosgw.

What each store verifies of what it is sent is pinned here (docs/deployment.md has the table;
a store upgrade that changes a row fails a test). Then what a browser or a legacy client does
against the store itself, from curl: presigned PUT, POST policy, multipart parts, and the CORS
preflight of the upload page's origin. Last, Ceph over HTTPS, where botocore's default checksum
trailers (aws-chunked) are refused.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway import create_app
from gateway.storage.s3 import make_s3_client

from conftest import backend_settings, init_stores
from e2e_harness import ensure_curl
from support import MiB, env_for_aws, jpeg_bytes, mp4_bytes, png_bytes, read_object, unique

pytestmark = pytest.mark.timeout(120)

PART = 5 * MiB
ORIGIN = "http://127.0.0.1:8080"
BODY = b"exactly these bytes"
WRONG = b"other bytes"


@pytest.fixture(params=["s3", "ceph"])
def backend(request):
    return request.param


# -- what each store verifies ------------------------------------------------------------------------
@pytest.fixture
def bucket(backend, request, tmp_path):
    """(client, bucket): the gateway's own S3 client on a fresh bucket of this store."""
    client = make_s3_client(backend_settings(request, tmp_path, backend))
    name = unique("verify")
    client.create_bucket(Bucket=name)
    return client, name


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32c_of(data: bytes) -> str:
    from crc32c import crc32c

    return b64(crc32c(data).to_bytes(4, "big"))


def put(client, bucket: str, key: str, headers: dict[str, str], *, signed: bool = False):
    """A PutObject signed as the gateway signs (UNSIGNED-PAYLOAD) or with the payload's
    SHA-256 in the signature; ``headers`` may lie about the body."""
    aws = env_for_aws()
    credentials = Credentials(aws["AWS_ACCESS_KEY_ID"], aws["AWS_SECRET_ACCESS_KEY"])
    url = f"{client.meta.endpoint_url}/{bucket}/{key}"
    payload = headers.pop("payload-sha256", "UNSIGNED-PAYLOAD")
    request = AWSRequest(
        "PUT", url, data=BODY, headers={**headers, "x-amz-content-sha256": payload}
    )
    SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    answer = requests.put(url, data=BODY, headers=dict(request.headers), timeout=30)
    return answer.status_code, answer.text


def stored(client, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


# (header, value of the wrong bytes) -> the store's answer: "stored" (kept under a checksum that
# is not its own) or the S3 error code of a refusal. The table in docs/deployment.md.
WRONG_CHECKSUMS = {
    "Content-MD5": b64(hashlib.md5(WRONG).digest()),
    "x-amz-checksum-crc32c": crc32c_of(WRONG),
    "x-amz-checksum-sha256": b64(hashlib.sha256(WRONG).digest()),
    "payload-sha256": hashlib.sha256(WRONG).hexdigest(),  # SigV4's x-amz-content-sha256
}
VERIFIES = {
    "s3": {},  # moto 5.2: verifies nothing
    "ceph": {"Content-MD5": "BadDigest", "payload-sha256": "XAmzContentSHA256Mismatch"},
}


@pytest.mark.parametrize("header", list(WRONG_CHECKSUMS))
def test_what_each_store_verifies_on_put_object(bucket, backend, header):
    client, name = bucket
    status, text = put(client, name, "k", {header: WRONG_CHECKSUMS[header]})
    refusal = VERIFIES[backend].get(header)
    if refusal is None:
        assert status == 200, text
        assert stored(client, name, "k") == BODY  # kept, whatever the checksum said
    else:
        assert status == 400 and f"<Code>{refusal}</Code>" in text, (status, text)
        assert stored(client, name, "k") is None


def test_a_right_checksum_of_each_kind_is_accepted(bucket):
    client, name = bucket
    right = {
        "Content-MD5": b64(hashlib.md5(BODY).digest()),
        "x-amz-checksum-crc32c": crc32c_of(BODY),
        "payload-sha256": hashlib.sha256(BODY).hexdigest(),
    }
    assert put(client, name, "k", right)[0] == 200
    assert stored(client, name, "k") == BODY


def test_a_part_with_a_wrong_crc32c_is_kept_by_both_stores(bucket, backend):
    """UploadPart as the gateway's writer sends it (gateway/storage/s3_requests.py): neither
    moto nor Ceph checks the CRC32C; only AWS does. The gateway cannot lean on it here."""
    client, name = bucket
    upload = client.create_multipart_upload(Bucket=name, Key="m", ChecksumAlgorithm="CRC32C")
    answer = client.upload_part(
        Bucket=name,
        Key="m",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=BODY,
        ChecksumCRC32C=crc32c_of(WRONG),
    )
    parts = client.list_parts(Bucket=name, Key="m", UploadId=upload["UploadId"])["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == [
        (1, len(BODY), answer["ETag"])
    ]


def test_complete_multipart_answers_an_etag_only_on_moto(bucket, backend):
    """Ceph answers CompleteMultipartUpload with an empty <ETag>; HeadObject has the right one.
    The gateway never reads the first (it checks the object by HeadObject)."""
    client, name = bucket
    upload_id = client.create_multipart_upload(Bucket=name, Key="m")["UploadId"]
    etag = client.upload_part(Bucket=name, Key="m", UploadId=upload_id, PartNumber=1, Body=BODY)
    done = client.complete_multipart_upload(
        Bucket=name,
        Key="m",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
    )
    expected = '"' + hashlib.md5(hashlib.md5(BODY).digest()).hexdigest() + '-1"'
    assert client.head_object(Bucket=name, Key="m")["ETag"] == expected
    assert done.get("ETag") == ("" if backend == "ceph" else expected)


# -- the store's own endpoints, from curl ------------------------------------------------------------
@pytest.fixture
def direct(backend, request, tmp_path):
    """(client, auth, svc) of a gateway that signs direct uploads to this store for ORIGIN."""
    settings = backend_settings(
        request,
        tmp_path,
        backend,
        direct_part_size=PART,
        direct_single_put_max=PART,
        cors_origins=(ORIGIN,),
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    from gateway.http.auth import mint_token

    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app.test_client(), auth, svc


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers in lower case, body) of one curl request."""
    done = subprocess.run(
        [ensure_curl(), "-sS", "-D", "-", *args], capture_output=True, check=True, timeout=60
    )
    head, _, body = done.stdout.decode("latin-1").partition("\r\n\r\n")
    while head.startswith("HTTP/1.1 100"):  # Expect: 100-continue
        head, _, body = body.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


def initiate(client, auth, content: bytes, content_type: str) -> dict:
    item = {"filename": "f", "contentType": content_type, "size": len(content)}
    item["sha256"] = hashlib.sha256(content).hexdigest()
    answer = client.post(
        "/api/uploads/initiate", headers=auth, json={"projectId": "p1", "files": [item]}
    )
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["uploads"][0]


def complete_and_check(client, auth, svc, upload: dict, content: bytes, parts=None) -> None:
    done = client.post(
        f"/api/uploads/{upload['uploadId']}/complete",
        headers=auth,
        json={"parts": parts} if parts is not None else None,
    )
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["media"]["sha256"] == hashlib.sha256(content).hexdigest()
    store = svc.store
    body = store.client.get_object(Bucket=store.bucket, Key=upload["s3Key"])["Body"].read()
    assert body == content
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_presigned_put_from_curl(direct, tmp_path):
    client, auth, svc = direct
    content = png_bytes(300_000)
    upload = initiate(client, auth, content, "image/png")
    (tmp_path / "file").write_bytes(content)
    headers = [f"-H{k}: {v}" for k, v in upload["put"]["headers"].items()]
    status, _, body = curl("-X", "PUT", *headers, "--data-binary", f"@{tmp_path / 'file'}",
                           upload["put"]["url"])  # fmt: skip
    assert status == 200, body
    complete_and_check(client, auth, svc, upload, content)


def test_post_policy_from_curl(direct, tmp_path):
    client, auth, svc = direct
    content = jpeg_bytes(200_000)
    upload = initiate(client, auth, content, "image/jpeg")
    (tmp_path / "file").write_bytes(content)
    fields = [f"-F{k}={v}" for k, v in upload["post"]["fields"].items()]
    status, _, body = curl(*fields, f"-Ffile=@{tmp_path / 'file'}", upload["post"]["url"])
    assert status in (200, 204), body
    complete_and_check(client, auth, svc, upload, content)


def test_multipart_parts_from_curl(direct, tmp_path):
    client, auth, svc = direct
    content = mp4_bytes(PART + 123_456)
    upload = initiate(client, auth, content, "video/mp4")
    assert upload["method"] == "multipart"
    size, parts = upload["multipart"]["partSize"], []
    for part in upload["multipart"]["parts"]:
        n = part["partNumber"]
        (tmp_path / f"part{n}").write_bytes(content[(n - 1) * size : n * size])
        status, headers, body = curl("-T", str(tmp_path / f"part{n}"), part["url"])
        assert status == 200, body
        parts.append({"partNumber": n, "etag": headers["etag"]})
    assert len(parts) == 2
    complete_and_check(client, auth, svc, upload, content, parts)


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_the_pages_origin_passes_the_cors_preflight_and_another_does_not(direct, backend, method):
    """What a browser asks the store before a signed PUT or POST (flask init set the rules)."""
    _, _, svc = direct
    url = f"{svc.store.client.meta.endpoint_url}/{svc.store.bucket}/uploads/x.png"
    asked = ["-H", f"Access-Control-Request-Method: {method}",
             "-H", "Access-Control-Request-Headers: content-type,x-amz-checksum-sha256"]  # fmt: skip
    status, headers, body = curl("-X", "OPTIONS", "-H", f"Origin: {ORIGIN}", *asked, url)
    assert status == 200, body
    assert headers["access-control-allow-origin"] == ORIGIN
    assert method in headers["access-control-allow-methods"]
    status, headers, _ = curl("-X", "OPTIONS", "-H", "Origin: http://evil.example", *asked, url)
    assert status == 403  # a browser stops at a preflight that is not 2xx
    # moto echoes any origin even then; Ceph (as AWS) names none
    refused = headers.get("access-control-allow-origin")
    assert refused == ("http://evil.example" if backend == "s3" else None)


# -- Ceph over HTTPS ---------------------------------------------------------------------------------
def test_every_protocol_stores_on_ceph_over_https(ceph_cluster, tmp_path, monkeypatch):
    """Over TLS botocore (>= 1.36) sends its own checksums of a streamed body as aws-chunked
    trailers unless told otherwise; Ceph refuses them (411 MissingContentLength). The gateway's
    client asks for checksums only where an operation requires one: a form upload (parts and
    a single put) and a tus upload (a chunk object, a part, a tail) all reach Ceph."""
    from gateway.http.auth import mint_token

    from conftest import make_settings
    from support import form_body

    monkeypatch.setenv("AWS_CA_BUNDLE", ceph_cluster.ca_file)
    settings = make_settings(tmp_path, backend="ceph", ceph_url=ceph_cluster.https_url)
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    client = app.test_client()
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}

    small, big = png_bytes(40_000), mp4_bytes(settings.effective_part_size + 5_000)
    body, content_type = form_body(
        [("projectId", "p1")], [("file", "a.png", small), ("file", "b.mp4", big)]
    )
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})
    assert answer.status_code == 201, answer.get_json()
    assert [m["size"] for m in answer.get_json()["files"]] == [len(small), len(big)]

    part = settings.effective_part_size
    content = mp4_bytes(part + 70_000, seed=5)
    created = client.post(
        "/api/tus/",
        headers={
            **auth,
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(content)),
            "Upload-Metadata": "projectId " + b64(b"p1") + ",filename " + b64(b"c.mp4"),
        },
    )
    assert created.status_code == 201, created.get_json()
    location = "/" + created.headers["Location"].split("://", 1)[1].split("/", 1)[1]
    offset = 0
    for chunk in (content[:1000], content[1000 : part + 1000], content[part + 1000 :]):
        sent = client.patch(
            location,
            data=chunk,
            headers={
                **auth,
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert sent.status_code == 204, sent.get_json()
        offset += len(chunk)
    record = svc.records.get(location.rsplit("/", 1)[1])
    assert record.status == "stored" and record.size == len(content)
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert read_object(svc.store, record.s3_key) == content
