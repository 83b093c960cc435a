"""A body changed between the gateway and the store never ends stored (GATEWAY_S3_INTEGRITY).

tests/faultproxy.py sits between the gateway and the store: ``flip`` changes one byte of a
PutObject or UploadPart body on the way (headers untouched: the checksums the gateway sent no
longer match), ``bad_digest`` answers 400 BadDigest as AWS S3 and Ceph answer such a body. For
the form and tus paths (where the gateway writes the bytes) both must end in 502
``storage_corrupted`` with nothing stored; direct uploads (the client writes the bytes, the
gateway copies server-side) are caught by the SHA-256 read back at ``complete``. What is left is
read from the store directly, not through the proxy.

Every test runs once per store in ``STORES``: moto and Ceph RGW (tests/ceph_harness.py, whose
user has the suite's AWS_* credentials, which the gateway and ``truth`` sign with). Another
store joins by adding its session fixture's name there with what it verifies.
"""

from __future__ import annotations

import base64
import hashlib

import boto3
import pytest
from botocore.config import Config
from test_direct import complete as complete_direct
from test_direct import initiate, promise, send_parts, send_put
from test_tus import create, head, patch, path_of

from gateway import create_app
from gateway.http.auth import mint_token

import faultproxy as fp
from conftest import init_stores, make_settings
from support import MiB, assert_stored, form_body, mp4_bytes, png_bytes, record_ids

pytestmark = pytest.mark.timeout(120)

# The session fixture giving each store's URL -> (refuses a wrong Content-MD5, refuses a wrong
# x-amz-checksum-crc32c, its ETags are MD5s), as `flask check` finds them.
STORES = {"moto_url": (False, False, True), "ceph_url": (True, False, True)}
BIG = 13 * MiB + 123  # three parts of 6 MiB (the default part size): two whole, one tail
SMALL = 60_000  # one PutObject


@pytest.fixture(scope="module", params=STORES)
def upstream(request) -> str:
    return request.getfixturevalue(request.param)


@pytest.fixture
def verifies(request) -> tuple[bool, bool, bool]:
    return STORES[request.node.callspec.params["upstream"]]


@pytest.fixture(scope="module")
def proxy(upstream):
    proxy = fp.FaultProxy(upstream).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def truth(upstream):
    """A client to the store itself, bypassing the proxy (AWS_* credentials from the env)."""
    config = Config(region_name="us-east-1", s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=upstream, config=config)


class Gateway:
    def __init__(self, tmp_path, proxy, truth, **overrides) -> None:
        settings = make_settings(
            tmp_path, backend="s3", moto_url=proxy.url, s3_max_attempts=2, **overrides
        )
        self.app = create_app(settings)
        self.app.config["TESTING"] = True
        self.svc = self.app.extensions["gateway"]
        init_stores(self.svc)
        self.client = self.app.test_client()
        self.truth = truth
        with self.app.app_context():
            self.auth = {"Authorization": f"Bearer {mint_token('alice')}"}
        proxy.clear()

    @property
    def bucket(self) -> str:
        return self.svc.store.bucket

    def upload(self, name: str, content: bytes):
        body, content_type = form_body([("projectId", "p1")], [("file", name, content)])
        return self.client.post(
            "/api/upload", data=body, headers={"Content-Type": content_type, **self.auth}
        )

    def objects(self) -> list[str]:
        listed = self.truth.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    def uploads(self) -> list[str]:
        listed = self.truth.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in listed]

    def read(self, full_key: str) -> bytes:
        return self.truth.get_object(Bucket=self.bucket, Key=full_key)["Body"].read()

    def leftovers(self) -> dict[str, list[str]]:
        return {
            "objects": self.objects(),
            "uploads": self.uploads(),
            "records": record_ids(self.svc.records),
        }


NOTHING = {"objects": [], "uploads": [], "records": []}


@pytest.fixture
def gw(tmp_path, proxy, truth):
    return Gateway(tmp_path, proxy, truth)


def error_of(response) -> tuple[int, str]:
    body = response.get_json()
    assert body and body["success"] is False, response.data[:300]
    return response.status_code, body["error"]["code"]


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


FAULTS = ["flip", "bad_digest"]
FORM = {
    "put-object": (fp.is_put_object, "cat.png", png_bytes(SMALL)),
    "part": (fp.is_upload_part, "clip.mp4", mp4_bytes(BIG)),
}


# -- the form path -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("path", FORM)
def test_form_body_changed_on_the_way_is_refused_and_nothing_is_left(gw, proxy, path, fault):
    match, name, content = FORM[path]
    rule = proxy.add(match, fault, times=1)
    response = gw.upload(name, content)
    assert error_of(response) == (502, "storage_corrupted")
    assert rule.hits == 1
    if path == "part":
        assert proxy.requests(fp.is_abort_multipart), "the multipart upload was never aborted"
        assert not proxy.requests(fp.is_complete_multipart)
    assert gw.leftovers() == NOTHING
    again = gw.upload(name, content)  # the store is fine again: the retry stores the bytes
    assert again.status_code == 201, again.get_json()
    assert_stored(gw.svc, again.get_json(), content)
    assert gw.objects() == [again.get_json()["s3Key"]] and gw.uploads() == []


@pytest.mark.parametrize("path", FORM)
def test_each_write_carries_the_md5_of_its_body(gw, proxy, path):
    """Content-MD5 (which AWS S3 and Ceph verify) on every PutObject and UploadPart."""
    match, name, content = FORM[path]
    response = gw.upload(name, content)
    assert response.status_code == 201, response.get_json()
    sent = proxy.requests(match)
    if path == "put-object":
        assert [r.headers["content-md5"] for r in sent] == [b64_md5(content)]
    else:
        part = gw.svc.store.part_size
        pieces = [content[i : i + part] for i in range(0, len(content), part)]
        by_number = {r.query["partNumber"][0]: r.headers["content-md5"] for r in sent}
        assert by_number == {str(n): b64_md5(p) for n, p in enumerate(pieces, start=1)}


def test_crc32c_mode_on_a_store_that_verifies_no_crc32c_keeps_the_changed_bytes(
    tmp_path, proxy, truth, verifies
):
    """The control: without the MD5 check, moto (and Ceph) store the changed body under the
    CRC32C it does not match. This is what ``flask check`` refuses (exit 1) on such a store."""
    if verifies[1]:
        pytest.skip("this store verifies CRC32C")
    gw = Gateway(tmp_path, proxy, truth, s3_integrity="crc32c")
    content = mp4_bytes(BIG)
    proxy.add(fp.is_upload_part, "flip", times=1)
    response = gw.upload("clip.mp4", content)
    assert response.status_code == 201, response.get_json()
    assert "content-md5" not in proxy.requests(fp.is_upload_part)[0].headers
    stored = gw.read(response.get_json()["s3Key"])
    assert len(stored) == len(content) and stored != content


def test_crc32c_mode_refused_by_a_store_that_verifies_it_leaves_nothing(tmp_path, proxy, truth):
    gw = Gateway(tmp_path, proxy, truth, s3_integrity="crc32c")
    proxy.add(fp.is_upload_part, "bad_digest", times=1)
    response = gw.upload("clip.mp4", mp4_bytes(BIG))
    assert error_of(response) == (502, "storage_corrupted")
    assert gw.leftovers() == NOTHING


# -- tus ----------------------------------------------------------------------------------------------
def tus_upload_state(gw, location) -> tuple[int, str]:
    answer = head(gw.client, gw.auth, location)
    record = gw.svc.records.get(location.rsplit("/", 1)[1])
    return int(answer.headers["Upload-Offset"]), record.status


TUS = {
    # what the PATCH writes: the whole object (one PutObject), parts, or the tail of an upload
    # not finished yet (a chunk object)
    "put-object": (fp.is_put_object, png_bytes(SMALL), SMALL),
    "part": (fp.is_upload_part, mp4_bytes(BIG), BIG),
    "chunk": (fp.is_put_object, png_bytes(SMALL), SMALL // 2),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("path", TUS)
def test_tus_chunk_changed_on_the_way_is_refused_and_the_upload_unchanged(gw, proxy, path, fault):
    match, content, sent = TUS[path]
    created = create(gw.client, gw.auth, len(content))
    assert created.status_code == 201, created.get_json()
    location = path_of(created)
    rule = proxy.add(match, fault, times=1)
    answer = patch(gw.client, gw.auth, location, 0, content[:sent])
    assert error_of(answer) == (502, "storage_corrupted")
    assert rule.hits == 1
    assert all("content-md5" in r.headers for r in proxy.requests(match))  # Ceph, AWS check it
    assert tus_upload_state(gw, location) == (0, "pending")  # the offset did not move
    assert gw.objects() == [] and gw.uploads() == []  # no object, part or chunk of it
    offset = 0
    while offset < len(content):  # the same upload goes on, and ends exact
        answer = patch(gw.client, gw.auth, location, offset, content[offset:sent])
        assert answer.status_code == 204, answer.get_json()
        offset = int(answer.headers["Upload-Offset"])
        sent = len(content)
    record = gw.svc.records.get(location.rsplit("/", 1)[1])
    assert record.status == "stored" and record.sha256 == hashlib.sha256(content).hexdigest()
    assert gw.objects() == [gw.svc.store.full_key(record.s3_key)] and gw.uploads() == []
    assert gw.read(gw.svc.store.full_key(record.s3_key)) == content


# -- direct uploads: the client writes, complete reads back -------------------------------------------
DIRECT_PART = 5 * MiB


@pytest.mark.parametrize("method", ["put", "multipart"])
def test_direct_body_changed_on_the_way_is_refused_at_complete(tmp_path, proxy, truth, method):
    """The gateway never holds these bytes: the SHA-256 promised at initiate, checked against
    the object read back at complete, is what catches them (no promise, no check possible)."""
    gw = Gateway(
        tmp_path,
        proxy,
        truth,
        direct_part_size=DIRECT_PART,
        direct_single_put_max=DIRECT_PART,
    )
    content = mp4_bytes(DIRECT_PART + 1000) if method == "multipart" else png_bytes(SMALL)
    kind = "video/mp4" if method == "multipart" else "image/png"
    initiated = initiate(gw.client, gw.auth, [promise(content, kind, sha256=True)])
    [upload] = initiated.get_json()["uploads"]
    rule = proxy.add(fp.is_upload_part if method == "multipart" else fp.is_put_object, "flip")
    parts = None
    if method == "put":
        assert send_put(upload, content).status_code == 200
    else:
        parts = send_parts(upload, content)
    assert rule.hits >= 1
    response = complete_direct(gw.client, gw.auth, upload["uploadId"], parts)
    assert error_of(response) == (422, "upload_rejected")
    assert gw.svc.records.get(upload["uploadId"]).status == "rejected"
    assert gw.objects() == [] and gw.uploads() == []


# -- flask check ------------------------------------------------------------------------------------
def check(gw) -> tuple[int, list[str]]:
    result = gw.app.test_cli_runner().invoke(args=["check"])
    return result.exit_code, result.output.splitlines()


def test_check_says_what_the_store_verifies_and_that_the_md5_mode_holds(gw, verifies):
    code, lines = check(gw)
    assert code == 0, lines
    assert lines[:5] == [
        f"store: s3://{gw.bucket}/uploads",
        f"addressing: path-style ({gw.svc.store.requests.bucket_url})",
        f"refuses a wrong Content-MD5: {'yes' if verifies[0] else 'NO'}",
        f"refuses a wrong x-amz-checksum-crc32c: {'yes' if verifies[1] else 'NO'}",
        f"ETag of a PutObject is the MD5 of its bytes: {'yes' if verifies[2] else 'NO'}",
    ]
    if verifies == (False, False, True):  # moto
        assert lines[5:] == [
            "CORS: none on the bucket (browsers cannot send direct uploads themselves)",
            "notifications: none configured on the bucket",
            "the store verifies no checksum it is sent",
            "GATEWAY_S3_INTEGRITY=auto (md5): integrity holds: the store refuses nothing; the"
            " gateway compares each write's ETag with the MD5 it sent",
        ]
    assert gw.objects() == [] and gw.uploads() == []  # the scratch object is gone


def test_check_fails_the_crc32c_mode_on_a_store_that_does_not_verify_it(
    tmp_path, proxy, truth, verifies
):
    if verifies[1]:
        pytest.skip("this store verifies CRC32C")
    gw = Gateway(tmp_path, proxy, truth, s3_integrity="crc32c")
    code, lines = check(gw)
    assert code == 1
    assert lines[-1] == (
        "GATEWAY_S3_INTEGRITY=crc32c: integrity is NOT kept: the store stores a body whose"
        " CRC32C differs; set GATEWAY_S3_INTEGRITY=md5"
    )
    assert gw.objects() == []


def has(name: str):
    return lambda r: fp.is_put_object(r) and name in r.headers


@pytest.mark.parametrize("mode", ["md5", "crc32c"])
def test_check_sees_a_store_that_verifies_checksums(tmp_path, proxy, truth, mode):
    """The proxy answers BadDigest to a wrong checksum, as AWS S3 does to both."""
    gw = Gateway(tmp_path, proxy, truth, s3_integrity=mode)
    md5 = proxy.add(has("content-md5"), "bad_digest")
    crc = proxy.add(has("x-amz-checksum-crc32c"), "bad_digest")
    code, lines = check(gw)
    assert code == 0, lines
    assert (md5.hits, crc.hits) == (1, 1)
    assert "refuses a wrong Content-MD5: yes" in lines
    assert "refuses a wrong x-amz-checksum-crc32c: yes" in lines
    assert "the store verifies no checksum it is sent" not in lines
    assert (
        lines[-1]
        == {
            "md5": "GATEWAY_S3_INTEGRITY=md5: integrity holds: the store refuses a body whose"
            " Content-MD5 differs, and the gateway compares each write's ETag with the MD5 it sent"
            " (the store verifies CRC32C: GATEWAY_S3_INTEGRITY=crc32c would hold too, with less"
            " CPU)",
            "crc32c": "GATEWAY_S3_INTEGRITY=crc32c: integrity holds: the store refuses a body whose"
            " CRC32C differs",
        }[mode]
    )
    assert gw.objects() == []


def test_check_reports_cors_and_notifications(tmp_path, proxy, truth, upstream, request):
    if request.node.callspec.params["upstream"] != "moto_url":
        pytest.skip("notifications to SQS: moto's (Ceph's go to SNS-style topics)")
    gw = Gateway(tmp_path, proxy, truth)
    gw.svc.storage.direct.allow_browsers(("https://app.example.com",))
    sqs = boto3.client("sqs", endpoint_url=upstream, region_name="us-east-1")
    queue = sqs.create_queue(QueueName=f"check-{gw.bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    gw.svc.storage.direct.notify(arn)
    code, lines = check(gw)
    assert code == 0, lines
    assert (
        "CORS: GET, PUT, POST, DELETE, HEAD from https://app.example.com; exposes ETag,"
        " x-amz-checksum-sha256" in lines
    )
    assert (
        f"notifications: s3:ObjectCreated:* to queue {arn} (prefix=uploads/ suffix=.upload)"
        in lines
    )


def test_check_on_local_storage_says_what_applies(tmp_path):
    app = create_app(make_settings(tmp_path))
    app.config["TESTING"] = True
    result = app.test_cli_runner().invoke(args=["check"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"store: {tmp_path / 'media'}",
        "local storage: the gateway writes each file itself and hashes the bytes it writes; no"
        " S3 checksum, addressing, CORS or notification applies",
        "integrity holds: a file is renamed into place only once all of it is written",
    ]
