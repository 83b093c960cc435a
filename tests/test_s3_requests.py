"""PutObject and UploadPart sent by the gateway itself (gateway/storage/s3_requests.py).

Against a moto server that checks signatures (``INITIAL_NO_AUTH_ACTION_COUNT``: the first
requests set up an IAM user, every later one must be signed with its key): a request the gateway
signs wrongly, or sends other than it signed (key encoding, headers), is refused there as S3
refuses it. Retries, faults and what is left behind: tests/test_s3_faults.py, through its proxy.
moto does not verify ``x-amz-checksum-*`` values; what S3 does with them is S3's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from test_metrics import parse, total

from gateway import create_app, metrics
from gateway.errors import StorageError, StorageUnavailable
from gateway.storage.s3 import make_s3_client, translate
from gateway.storage.s3_requests import S3Requests, bucket_url

from conftest import init_stores, make_settings
from support import (
    MiB,
    assert_stored,
    form_body,
    free_port,
    png_bytes,
    record_s3_calls,
    stop,
    unique,
    wait_for_http,
)

pytestmark = pytest.mark.slow

KEYS = [
    "uploads/plain.png",
    "uploads/a b+c~d%e&f=g?h#i/ü €.png",  # everything a URL path encodes, and non-ASCII
    "uploads/double//slash/./dot/../x.png",  # not normalised: S3 keys are opaque
]


@pytest.fixture(scope="module")
def checking_moto():
    """moto with signature checks on, and the access key of a user allowed s3:*."""
    port = free_port()
    env = {
        **os.environ,
        "INITIAL_NO_AUTH_ACTION_COUNT": "3",  # CreateUser, CreateAccessKey, PutUserPolicy
        "AWS_ACCESS_KEY_ID": "setup",
        "AWS_SECRET_ACCESS_KEY": "setup",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/moto-api/", proc=proc)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="gateway")
        key = iam.create_access_key(UserName="gateway")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
        iam.put_user_policy(UserName="gateway", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop(proc)


@pytest.fixture
def settings(tmp_path, checking_moto, monkeypatch):
    url, key_id, secret = checking_moto
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return make_settings(tmp_path, backend="s3", moto_url=url, s3_max_attempts=2)


@pytest.fixture
def client(settings):
    client = make_s3_client(settings)
    client.create_bucket(Bucket=settings.storage_url.split("/")[2])
    return client


def s3_client_with(url: str, key_id: str, secret: str, region: str = "us-east-1", **kwargs):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        **kwargs,
    )


def requests_for(client, bucket: str) -> S3Requests:
    return S3Requests(
        client,
        bucket=bucket,
        max_attempts=2,
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=2,
    )


def bucket_of(settings) -> str:
    return str(settings.storage_url.split("/")[2])


@pytest.mark.parametrize("key", KEYS, ids=["plain", "reserved-and-unicode", "dots-and-slashes"])
def test_put_object_is_signed_as_s3_checks_it_and_stores_exactly(client, settings, key):
    bucket = bucket_of(settings)
    body = png_bytes(70_000)
    digest = hashlib.sha256(body).digest()
    requests_for(client, bucket).put_object(
        key,
        body,
        {
            "Content-Type": "image/png",
            "Content-Disposition": "inline; filename*=UTF-8''%C3%BC.png",
            "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
            "x-amz-meta-sha256": digest.hex(),
        },
    )
    stored = client.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "image/png"
    assert stored["ContentDisposition"] == "inline; filename*=UTF-8''%C3%BC.png"
    assert stored["Metadata"] == {"sha256": digest.hex()}
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]


def test_upload_part_answers_the_etag_that_completes_the_upload(client, settings):
    bucket, key = bucket_of(settings), KEYS[1]
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    first, second = png_bytes(5 * MiB, seed=1), png_bytes(1000, seed=2)
    sender = requests_for(client, bucket)
    etags = [
        sender.upload_part(key, upload, number, part, {"x-amz-checksum-crc32c": "AAAAAA=="})
        for number, part in ((1, bytearray(first)), (2, second))  # the writer sends bytearrays
    ]
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (1, etags[0], len(first)),
        (2, etags[1], len(second)),
    ]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == first + second


def test_a_wrong_secret_is_refused_as_the_client_refuses_it_and_counted(settings, checking_moto):
    url, key_id, _ = checking_moto
    wrong = s3_client_with(url, key_id, "not-the-secret")
    before = parse(metrics.scrape().decode())
    with pytest.raises(ClientError) as refused:
        requests_for(wrong, bucket_of(settings)).put_object("uploads/x", b"x", {})
    after = parse(metrics.scrape().decode())
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.operation_name == "PutObject"
    error = translate(refused.value, "storing the object")
    assert type(error) is StorageError and error.status == 502

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_s3_call_errors_total", operation="PutObject") == 1
    assert (
        delta("gateway_s3_call_errors_total", operation="PutObject", code="SignatureDoesNotMatch")
        == 1
    )
    assert delta("gateway_s3_call_duration_seconds_count", operation="PutObject") == 1


def test_a_missing_bucket_is_a_client_error_that_is_not_retried(client, settings):
    before = parse(metrics.scrape().decode())
    with pytest.raises(ClientError) as refused:
        requests_for(client, unique("no-such-bucket")).put_object("k", b"x", {})
    after = parse(metrics.scrape().decode())
    assert refused.value.response["Error"]["Code"] == "NoSuchBucket"
    assert not isinstance(translate(refused.value, "storing"), StorageUnavailable)
    assert (
        total(after, "gateway_s3_call_errors_total", operation="PutObject", code="NoSuchBucket")
        - total(before, "gateway_s3_call_errors_total", operation="PutObject", code="NoSuchBucket")
        == 1
    )


def test_successful_calls_are_timed_by_operation(client, settings):
    bucket = bucket_of(settings)
    before = parse(metrics.scrape().decode())
    sender = requests_for(client, bucket)
    sender.put_object("uploads/a.png", b"a", {})
    upload = client.create_multipart_upload(Bucket=bucket, Key="uploads/b.png")["UploadId"]
    sender.upload_part("uploads/b.png", upload, 1, b"b", {"x-amz-checksum-crc32c": "AAAAAA=="})
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_s3_call_duration_seconds_count", operation="PutObject") == 1
    assert delta("gateway_s3_call_duration_seconds_count", operation="UploadPart") == 1
    assert delta("gateway_s3_call_errors_total") == 0


def test_the_bucket_url_is_the_clients_own_addressing(client, settings, checking_moto):
    url, _, _ = checking_moto
    assert bucket_url(client, "my-bucket") == f"{url}/my-bucket"  # path style with an endpoint
    aws = boto3.client(
        "s3", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    assert bucket_url(aws, "my-bucket") == "https://my-bucket.s3.eu-west-1.amazonaws.com"
    assert bucket_url(aws, "My.Bucket") == "https://s3.eu-west-1.amazonaws.com/My.Bucket"
    assert bucket_url(client, "gateway-bucket-url") == f"{url}/gateway-bucket-url"


def test_an_upload_through_the_gateway_is_signed_and_stored_exactly(settings):
    """The whole path on a signature-checking S3: a single PutObject and a multipart upload."""
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    calls = record_s3_calls(svc)
    small, big = png_bytes(40_000), png_bytes(2 * settings.effective_part_size + 123, seed=3)
    with app.app_context():
        from gateway.http.auth import mint_token

        token = mint_token("alice")
    for name, content in (("small.png", small), ("big.png", big)):
        body, content_type = form_body([("projectId", "p1")], [("file", name, content)])
        answer = app.test_client().post(
            "/api/upload",
            data=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 201, answer.get_json()
        assert_stored(svc, answer.get_json(), content)
    assert calls.count("PutObject") == 1
    assert calls.count("UploadPart") == 3


def test_requests_are_signed_for_the_clients_region_without_hashing_the_body(checking_moto):
    """moto accepts any region in the signature's scope; S3 does not. The body goes unsigned
    (its checksum header is what S3 verifies), as the client sends it."""
    url, key_id, secret = checking_moto
    regional = s3_client_with(
        url,
        key_id,
        secret,
        region="eu-central-1",
        config=Config(s3={"payload_signing_enabled": False}),
    )
    sender = requests_for(regional, "any-bucket")
    sent = []
    send = sender._http.send
    sender._http.send = lambda request: sent.append(request) or send(request)
    with pytest.raises(ClientError):  # no such bucket: only the request matters here
        sender.put_object("k", b"body", {"Content-Type": "image/png"})
    assert len(sent) == 1
    headers = sent[0].headers
    assert f"Credential={key_id}/" in headers["Authorization"]
    assert "/eu-central-1/s3/aws4_request" in headers["Authorization"]
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["Content-Length"] == "4"


class StallingStore:
    """A stand-in for S3 on 127.0.0.1 that reads each request's headers, then stops reading
    for ``stall`` seconds (a store that is behind: the body's send blocks, the socket's
    buffers full), then takes the body and answers 200, on one kept-alive connection."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.bodies: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as stream:
                while head := self._head(stream):
                    length = int(head[b"content-length"])
                    time.sleep(self.stall)  # the store is behind: nothing read meanwhile
                    self.bodies.append(stream.read(length))
                    conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: 0\r\n\r\n')

    @staticmethod
    def _head(stream) -> dict[bytes, bytes]:
        """A request's headers; empty once the client has closed."""
        if not stream.readline():  # the request line
            return {}
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def close(self) -> None:
        self._listener.close()


def test_a_store_that_takes_a_body_slower_than_the_connect_timeout_is_not_timed_out():
    """Sending is timed by the read timeout, not the connect timeout (which only bounds making
    the connection): a store that stops reading a part's body for longer than the connect
    timeout gets the part, on a new connection and on a kept-alive one. urllib3 alone sends
    under the connect timeout: the send timed out (bench/slow.py, 1,000 uploads on moto)."""
    store = StallingStore(stall=0.6)
    try:
        client = s3_client_with(store.url, "k", "s")
        sender = S3Requests(
            client,
            bucket="b",
            max_attempts=1,
            connect_timeout=0.1,
            read_timeout=30,
            max_pool_connections=1,
        )
        bodies = [os.urandom(16 * MiB), os.urandom(16 * MiB)]
        for number, body in enumerate(bodies, 1):
            assert sender.upload_part("k", "u", number, body, {}) == '"e"'
    finally:
        store.close()
    assert store.connections == 1  # the second part went on the kept-alive connection
    assert [hashlib.sha256(b).digest() for b in store.bodies] == [
        hashlib.sha256(b).digest() for b in bodies
    ]
