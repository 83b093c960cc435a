"""Real tus clients through real nginx and gunicorn on S3 (moto): tuspy (Python) and
tus-js-client (Node), a client killed mid-upload that resumes, and a differential test
against the reference server (@tus/server with @tus/s3-store) on the same moto server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import media_samples as samples
import pytest
import requests

from gateway.media.lifecycle import Status

from e2e_harness import ROOT, gateway_stack, poll, write_file
from support import MiB, env_for_aws, free_port, record_ids, stop, unique, wait_for_http

pytestmark = pytest.mark.timeout(300)
NODE = ROOT / "tests" / "node"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_url):
    with gateway_stack(
        tmp_path_factory.mktemp("tus"), mode="s3", moto_url=moto_url, GATEWAY_CORS_ORIGINS="*"
    ) as stack:
        yield stack
        stack.reset()


@pytest.fixture
def tus(stack):
    stack.reset()
    yield stack
    print(stack.logs())


def media_file(path: Path, size: int) -> Path:
    """A JPEG head (so the type sniffs as image/jpeg) and ``size`` bytes in all."""
    head = samples.photo(600, 400)
    return write_file(path, head, size) if size > len(head) else path.write_bytes(head) or path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(stack, media_id: str) -> bytes:
    record = stack.svc.records.get(media_id)
    assert record.status is Status.STORED, record
    store = stack.svc.store
    return store.client.get_object(Bucket=store.bucket, Key=store.full_key(record.s3_key))[
        "Body"
    ].read()


# -- tuspy ---------------------------------------------------------------------------------------
def test_tuspy_with_checksums(tus, tmp_path):
    from tusclient import client

    path = media_file(tmp_path / "a.jpg", 20 * MiB + 123)
    uploader = client.TusClient(tus.url + "/api/tus/", headers=tus.auth).uploader(
        file_path=str(path),
        chunk_size=3 * MiB,
        upload_checksum=True,
        metadata={"projectId": "p1", "filename": "a.jpg"},
    )
    uploader.upload()
    media_id = uploader.url.rsplit("/", 1)[1]
    assert stored(tus, media_id) == path.read_bytes()
    assert tus.svc.records.get(media_id).s3_key.endswith(".jpg")


TUSPY_SCRIPT = """
import sys
from tusclient import client
from tusclient.storage.filestorage import FileStorage
endpoint, token, path, storage = sys.argv[1:5]
uploader = client.TusClient(endpoint, headers={"Authorization": "Bearer " + token}).uploader(
    file_path=path, chunk_size=256 * 1024, store_url=True, url_storage=FileStorage(storage),
    metadata={"projectId": "p1", "filename": "big.jpg"})
if not uploader.url:  # a fresh upload: create it first (a resumed one knows its URL)
    uploader.set_url(uploader.create_url())
    uploader.offset = 0
print(uploader.url, flush=True)
uploader.upload()
print("done", flush=True)
"""


def test_tuspy_killed_mid_upload_resumes_from_the_stored_url(tus, tmp_path):
    path = media_file(tmp_path / "big.jpg", 24 * MiB)
    storage = tmp_path / "urls.json"
    argv = [
        sys.executable,
        "-c",
        TUSPY_SCRIPT,
        tus.url + "/api/tus/",
        tus.token,
        str(path),
        str(storage),
    ]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    media_id = first.stdout.readline().strip().rsplit("/", 1)[1]

    def offset() -> int:
        return tus.svc.records.get(media_id).upload.offset

    assert poll(lambda: offset() >= 9 * MiB, timeout=120)  # past one S3 part
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    reached = offset()
    assert 0 < reached < path.stat().st_size
    second = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0].rsplit("/", 1)[1] == media_id  # the same upload, resumed
    data = stored(tus, media_id)
    assert sha256_of(data) == sha256_of(path.read_bytes())


# -- tus-js-client on Node ------------------------------------------------------------------------
def node_upload(stack, path: Path, **options) -> dict:
    options = {
        "endpoint": stack.url + "/api/tus/",
        "token": stack.token,
        "file": str(path),
        "metadata": {"projectId": "p1", "filename": path.name},
        **options,
    }
    done = subprocess.run(
        ["node", str(NODE / "tus_client.mjs"), json.dumps(options)],
        cwd=NODE,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr
    return json.loads(lines[-1])


@pytest.mark.parametrize(
    "options",
    [
        {"chunkSize": 2 * MiB},
        {"uploadDataDuringCreation": True},
        {"uploadLengthDeferred": True, "chunkSize": 3 * MiB},
        {"parallelUploads": 3, "metadataForPartialUploads": {"projectId": "p1"}},
    ],
    ids=["chunked", "data-during-creation", "length-deferred", "parallel"],
)
def test_tus_js_client(tus, tmp_path, options):
    path = media_file(tmp_path / "clip.jpg", 17 * MiB + 5)
    result = node_upload(tus, path, **options)
    assert result["ok"], result
    media_id = result["url"].rsplit("/", 1)[1]
    assert stored(tus, media_id) == path.read_bytes()
    left = tus.svc.records
    if options.get("parallelUploads"):  # the partial uploads are gone, the final one stays
        from support import record_ids

        assert record_ids(left) == [media_id]


def test_tus_js_client_is_refused_a_disallowed_type(tus, tmp_path):
    path = tmp_path / "evil.exe"
    path.write_bytes(b"MZ" + os.urandom(100_000))
    result = node_upload(tus, path, chunkSize=MiB)
    assert not result["ok"] and "415" in result["error"]
    from support import assert_nothing_left

    assert_nothing_left(tus.svc)


# -- the reference server, side by side -------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(moto_url, tmp_path_factory):
    bucket = unique("tusref")
    os.environ.update(env_for_aws())
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    port = free_port()
    log = open(tmp_path_factory.mktemp("ref") / "tus-server.log", "w")
    proc = subprocess.Popen(
        ["node", str(NODE / "tus_server.mjs"), str(port), moto_url, bucket],
        cwd=NODE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/files/"
    wait_for_http(url, proc=proc)
    yield url
    stop(proc)
    log.close()


def script(endpoint: str, headers: dict[str, str], data: bytes) -> list[tuple]:
    """One client script, step by step; what a tus client can observe of each step."""
    v = {"Tus-Resumable": "1.0.0", **headers}
    meta = (
        "projectId "
        + base64.b64encode(b"p1").decode()
        + ",filename "
        + base64.b64encode(b"a.jpg").decode()
    )
    seen = []

    def observe(name, answer, *fields):
        seen.append((name, answer.status_code, tuple((f, answer.headers.get(f)) for f in fields)))
        return answer

    observe("options", requests.options(endpoint, timeout=30), "Tus-Version", "Tus-Resumable")
    created = observe(
        "create",
        requests.post(
            endpoint,
            headers={**v, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
            timeout=30,
        ),
        "Tus-Resumable",
    )
    location = created.headers["Location"]
    if location.startswith("/"):
        location = endpoint.split("/", 3)[0] + "//" + endpoint.split("/", 3)[2] + location
    observe(
        "head-new", requests.head(location, headers=v, timeout=30), "Upload-Offset", "Upload-Length"
    )
    octet = {**v, "Content-Type": "application/offset+octet-stream"}
    observe(
        "patch-1",
        requests.patch(
            location, data=data[:MiB], headers={**octet, "Upload-Offset": "0"}, timeout=60
        ),
        "Upload-Offset",
    )
    observe(
        "patch-wrong-offset",
        requests.patch(
            location, data=data[:10], headers={**octet, "Upload-Offset": "5"}, timeout=60
        ),
    )
    observe(
        "patch-no-version",
        requests.patch(
            location,
            data=data[:10],
            headers={
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(MiB),
                **headers,
            },
            timeout=60,
        ),
    )
    observe("head-progress", requests.head(location, headers=v, timeout=30), "Upload-Offset")
    observe(
        "patch-rest",
        requests.patch(
            location, data=data[MiB:], headers={**octet, "Upload-Offset": str(MiB)}, timeout=120
        ),
        "Upload-Offset",
    )
    observe(
        "head-done",
        requests.head(location, headers=v, timeout=30),
        "Upload-Offset",
        "Upload-Length",
    )
    second = requests.post(
        endpoint, headers={**v, "Upload-Length": "100", "Upload-Metadata": meta}, timeout=30
    ).headers["Location"]
    if second.startswith("/"):
        second = endpoint.split("/", 3)[0] + "//" + endpoint.split("/", 3)[2] + second
    observe("delete", requests.delete(second, headers=v, timeout=30))
    observe("head-deleted", requests.head(second, headers=v, timeout=30))
    return seen


def test_the_protocol_behaves_as_the_reference_server(tus, reference):
    data = samples.photo(600, 400) + os.urandom(3 * MiB)
    ours = script(tus.url + "/api/tus/", tus.auth, data)
    theirs = script(reference, {}, data)
    # Where this gateway is stricter on purpose (docs/tus.md): none of these steps.
    assert ours == theirs
    [record] = [
        r
        for r in (tus.svc.records.get(i) for i in record_ids(tus.svc.records))
        if r.status is Status.STORED
    ]
    assert stored(tus, record.media_id) == data
