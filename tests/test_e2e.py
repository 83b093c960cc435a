"""End to end: real curl -> real nginx (nginx/gateway.conf) -> real gunicorn -> local dir or S3.

Two stacks, each started once for this module (tests/e2e_harness.py):
  * embedded: local media directory + SQLite; nginx serves /media/ itself. Its gateway cap is
    lowered to 64 MiB (GATEWAY_MAX_UPLOAD_BYTES) so the gateway's own size checks answer before
    nginx's 500m client_max_body_size does.
  * s3: a moto server as S3 + SQLite, with the production defaults (cap 500 MiB = nginx's).
Every test asserts the HTTP answer and the rule (TESTING.md): after a success the object and
its record both exist with the same size and SHA-256; after a refusal or fault there is no
object, no pending (multipart) upload and no record.
"""

from __future__ import annotations

import hashlib
import re
import socket

import pytest
import requests

from e2e_harness import (
    NGINX_TEMPLATE,
    MiB,
    gateway_stack,
    poll,
    read_response,
    request_head,
    sha256_of,
    start_nginx,
    write_file,
)
from support import (
    assert_nothing_left,
    assert_stored,
    form_body,
    free_port,
    jpeg_bytes,
    leftovers,
    mp4_bytes,
    png_bytes,
    stop,
)

pytestmark = pytest.mark.timeout(300)

EMBEDDED_CAP = 64 * MiB
ERROR_SHAPE_KEYS = {"success", "error", "requestId"}


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory):
    with gateway_stack(
        tmp_path_factory.mktemp("e2e-embedded"),
        mode="embedded",
        GATEWAY_MAX_UPLOAD_BYTES=str(EMBEDDED_CAP),
    ) as stack:
        yield stack
        stack.reset()


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, moto_url):
    with gateway_stack(tmp_path_factory.mktemp("e2e-s3"), mode="s3", moto_url=moto_url) as stack:
        yield stack
        stack.reset()  # the moto server is shared with other modules: free its memory


@pytest.fixture
def files(tmp_path):
    """A scratch dir for request bodies; emptied afterwards (some are hundreds of MiB)."""
    yield tmp_path
    for path in tmp_path.iterdir():
        if path.is_file():
            path.unlink()


def _fresh(stack):
    stack.reset()
    assert_nothing_left(stack.svc)
    yield stack
    # Shown by pytest only when the test failed.
    print(stack.logs())


@pytest.fixture
def embedded(embedded_stack):
    yield from _fresh(embedded_stack)


@pytest.fixture
def s3(s3_stack):
    yield from _fresh(s3_stack)


@pytest.fixture(params=["embedded", "s3"])
def stack(request):
    yield from _fresh(request.getfixturevalue(f"{request.param}_stack"))


# -- helpers ---------------------------------------------------------------------------------------
def assert_error(result, status: int, code: str) -> dict:
    """The gateway's JSON error shape (errors.py), with the response's X-Request-ID in it."""
    assert result.status == status, (result.status, result.body[:500])
    assert result.headers.get("content-type", "").startswith("application/json")
    body = result.json()
    assert set(body) == ERROR_SHAPE_KEYS and body["success"] is False
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == code
    assert body["requestId"] and body["requestId"] == result.headers.get("x-request-id")
    return body


def assert_only(svc, bodies_and_contents) -> None:
    """Exactly these uploads are stored (object + record, same size and SHA-256), nothing else."""
    for body, content in bodies_and_contents:
        assert_stored(svc, body, content)
    left = leftovers(svc)
    assert left["pending_uploads"] == []
    assert sorted(left["objects"]) == sorted(b["s3Key"] for b, _ in bodies_and_contents)
    assert sorted(left["records"]) == sorted(b["mediaId"] for b, _ in bodies_and_contents)


def nothing_left(svc) -> bool:
    return not any(leftovers(svc).values())


def gateway_log(stack) -> list[dict]:
    return stack.json_lines("gunicorn.log")


# -- the config itself -----------------------------------------------------------------------------
def test_upload_body_limit_in_nginx_matches_the_gateway_default():
    from gateway.config import Settings

    text = NGINX_TEMPLATE.read_text()
    upload = re.search(r"location = /api/upload \{(.*?)\n    \}", text, re.S).group(1)
    size = re.search(r"^\s*client_max_body_size (\d+)m;", upload, re.M).group(1)
    assert int(size) * MiB == Settings().max_upload_bytes
    assert re.search(r"^\s*proxy_request_buffering off;", upload, re.M)


def test_nginx_answers_json_when_the_gateway_is_down(tmp_path):
    port, dead = free_port(), free_port()  # nothing listens on ``dead``
    proc = start_nginx(
        tmp_path / "nginx", port=port, upstream=f"127.0.0.1:{dead}", media_root=tmp_path / "media"
    )
    try:
        body, content_type = form_body([("projectId", "p1")], [("file", "x.png", png_bytes())])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                request_head(
                    content_type=content_type,
                    length=len(body),
                    headers={"X-Request-ID": "e2e-down"},
                )
                + body
            )
            result = read_response(sock)
        assert_error(result, 502, "upstream_unavailable")
        assert result.json()["requestId"] == "e2e-down"
        assert result.headers["retry-after"] == "5"
    finally:
        stop(proc)


# -- successes -------------------------------------------------------------------------------------
def test_one_file_as_a_form_sends_it_embedded_served_by_nginx(embedded, files):
    content = png_bytes(300_000)
    path = files / "cat.png"
    path.write_bytes(content)
    result = embedded.curl(
        "-F", "projectId=p1", "-F", "caption=a cat", "-F", f"file=@{path};type=image/png"
    )
    assert result.status == 201, result.body
    body = result.json()
    assert body["success"] is True and body["contentType"] == "image/png"
    assert body["metadata"] == {"caption": "a cat"} and body["originalName"] == "cat.png"
    assert result.headers["x-request-id"]
    assert_only(embedded.svc, [(body, content)])

    # The URL points at nginx (X-Forwarded-Host/-Port through ProxyFix), which serves the file
    # itself from the media directory: no gateway response (those always carry X-Request-ID).
    assert body["url"] == f"{embedded.url}/media/{body['s3Key']}"
    served = requests.get(body["url"], timeout=10)
    assert served.status_code == 200 and served.content == content
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Request-ID" not in served.headers
    assert requests.head(body["url"], timeout=10).status_code == 200
    assert requests.delete(body["url"], timeout=10).status_code == 403  # GET/HEAD only


@pytest.mark.parametrize(
    "kind, name, mime",
    [
        ("wav", "field.wav", "audio/wav"),
        ("flac", "take.flac", "audio/flac"),
        ("opus", "note.opus", "audio/ogg"),
        ("aac", "clip.aac", "audio/aac"),
        ("caf", "memo.caf", "audio/x-caf"),
    ],
)
def test_audio_is_served_by_nginx_under_the_type_the_gateway_gives_it(embedded, files, kind,
                                                                      name, mime):  # fmt: skip
    """nginx's mime.types knows none of these (or names them otherwise): served inline, as
    the gateway's own route and S3 serve them."""
    import media_samples

    content = media_samples.audio(kind, 0.2)
    path = files / name
    path.write_bytes(content)
    result = embedded.curl("-F", "projectId=p1", "-F", f"file=@{path}")
    assert result.status == 201, result.body
    body = result.json()
    assert (body["contentType"], body["fileType"]) == (mime, "audio")
    served = requests.get(body["url"], timeout=10)
    assert served.status_code == 200 and served.content == content
    assert served.headers["Content-Type"] == mime
    assert "Content-Disposition" not in served.headers
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert_only(embedded.svc, [(body, content)])


def test_nginx_never_serves_temporary_files(embedded):
    folder = embedded.media_root / "projects" / "p1" / "media"
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".partial-{'0' * 32}-{'1' * 32}.png"
    partial.write_bytes(png_bytes(1000))
    try:
        answer = requests.get(f"{embedded.url}/media/projects/p1/media/{partial.name}", timeout=10)
        assert answer.status_code == 404 and b"PNG" not in answer.content
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        missing = requests.get(f"{embedded.url}/media/projects/p1/media/{'2' * 32}.png", timeout=10)
        assert missing.status_code == 404
        for refused in (answer, missing):  # the gateway's JSON error, not nginx's page
            assert refused.json()["error"]["code"] == "not_found"
            assert refused.json()["requestId"] == refused.headers["X-Request-ID"]
    finally:
        partial.unlink()


def test_one_file_as_a_form_sends_it_s3(s3, files):
    content = jpeg_bytes(2 * MiB)
    path = files / "photo.jpg"
    path.write_bytes(content)
    result = s3.curl("-F", "projectId=p1", "-F", f"file=@{path};type=image/jpeg")
    assert result.status == 201, result.body
    body = result.json()
    assert body["contentType"] == "image/jpeg" and body["size"] == len(content)
    assert_only(s3.svc, [(body, content)])
    # Without a CDN configured, the URL is the store's own (here: moto's path-style URL). The
    # bucket is private, so fetch that same object URL with a signature.
    store = s3.svc.store
    assert body["s3Key"] == f"uploads/projects/p1/media/{body['mediaId']}.jpg"  # the bucket's key
    assert body["url"] == f"{s3.settings.s3_endpoint_url}/{store.bucket}/{body['s3Key']}"
    signed = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": store.bucket, "Key": body["s3Key"]}
    )
    assert signed.split("?")[0] == body["url"]
    served = requests.get(signed, timeout=30)
    assert served.status_code == 200 and served.content == content
    assert served.headers["Content-Type"] == "image/jpeg"


def test_several_files_in_one_request(stack, files):
    contents = {
        "a.png": png_bytes(50_000, seed=3),
        "b.mp4": mp4_bytes(9 * MiB + 7),
        "c.jpg": jpeg_bytes(120_000),
    }
    types = {"a.png": "image/png", "b.mp4": "video/mp4", "c.jpg": "image/jpeg"}
    args = ["-F", "projectId=p1"]
    for name, content in contents.items():
        (files / name).write_bytes(content)
        args += ["-F", f"files=@{files / name};type={types[name]}"]
    result = stack.curl(*args)
    assert result.status == 201, result.body
    listed = result.json()["files"]
    assert [f["originalName"] for f in listed] == list(contents)
    assert [f["contentType"] for f in listed] == list(types.values())
    assert_only(stack.svc, [(f, contents[f["originalName"]]) for f in listed])


def test_a_200_mib_file_through_nginx_to_s3(s3, files):
    path = write_file(files / "big.mp4", mp4_bytes(64), 200 * MiB)
    digest = sha256_of(path)
    result = s3.curl("-F", "projectId=p1", "-F", f"file=@{path};type=video/mp4")
    assert result.status == 201, result.body
    body = result.json()
    assert body["size"] == 200 * MiB and body["sha256"] == digest
    record = s3.svc.records.get(body["mediaId"])
    assert (record.size, record.sha256) == (200 * MiB, digest)
    store = s3.svc.store
    obj = store.client.get_object(Bucket=store.bucket, Key=body["s3Key"])
    assert obj["ContentLength"] == 200 * MiB
    hasher = hashlib.sha256()
    for chunk in obj["Body"].iter_chunks(4 * MiB):
        hasher.update(chunk)
    assert hasher.hexdigest() == digest
    left = leftovers(s3.svc)
    assert left == {"objects": [body["s3Key"]], "pending_uploads": [], "records": [body["mediaId"]]}


def test_chunked_transfer_encoding(stack, files):
    # More than one S3 part (8 MiB), so the S3 stack goes through a multipart upload.
    content = mp4_bytes(12 * MiB + 321)
    body, content_type = form_body([("projectId", "p1")], [("file", "clip.mp4", content)])
    (files / "body").write_bytes(body)
    result = stack.curl(
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        f"Content-Type: {content_type}",
        "--data-binary",
        f"@{files / 'body'}",
    )
    assert result.status == 201, result.body
    assert_only(stack.svc, [(result.json(), content)])


def _unlucky_body(case: str) -> tuple[bytes, bytes, list[bytes], dict[str, str]]:
    """(boundary, body, stored file contents, metadata) with the parser's hardest spot at the
    gateway's 1 MiB read boundary (GATEWAY_READ_SIZE): gunicorn hands the body in exact reads."""
    disposition = b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    if case == "all-dash boundary, read ends inside the closing dashes":
        boundary = b"------"
        head = b"--" + boundary + b"\r\n" + disposition
        tail = b"\r\n--" + boundary + b"--\r\n"
        content = png_bytes(MiB - len(head) - len(tail) + 3)  # ...\r\n---------|-\r\n
        return boundary, head + content + tail, [content], {}
    boundary = b"gatewayB"
    dash = b"--" + boundary
    if case == "read ends inside transport padding":
        head = dash + b"\r\n" + disposition
        after = (
            dash + b" " * 100 + b'\r\nContent-Disposition: form-data; name="caption"\r\n\r\nv\r\n'
        )
        content = png_bytes(MiB - len(head) - 2 - len(dash) - 90)
        return (
            boundary,
            head + content + b"\r\n" + after + dash + b"--\r\n",
            [content],
            {"caption": "v"},
        )
    # An empty text part in compact form; the read ends right after its blank line.
    empty = dash + b'\r\nContent-Disposition: form-data; name="caption"\r\n\r\n'
    head = dash + b"\r\n" + disposition
    second = png_bytes(70_000, seed=5)
    first = png_bytes(MiB - len(head) - 2 - len(empty), seed=4)
    body = (
        head
        + first
        + b"\r\n"
        + empty
        + dash
        + b"\r\n"
        + disposition
        + second
        + b"\r\n"
        + dash
        + b"--\r\n"
    )
    return boundary, body, [first, second], {"caption": ""}


@pytest.mark.parametrize(
    "case",
    [
        "all-dash boundary, read ends inside the closing dashes",
        "read ends inside transport padding",
        "empty compact part, read ends after its blank line",
    ],
)
def test_unlucky_read_offsets_store_the_exact_bytes(stack, files, case):
    boundary, body, contents, metadata = _unlucky_body(case)
    assert all(b"\r\n--" + boundary not in content for content in contents)
    assert stack.settings.read_size == MiB
    (files / "body").write_bytes(body)
    result = stack.curl(
        "-H",
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}",
        "--data-binary",
        f"@{files / 'body'}",
        path="/api/upload?projectId=p1",
    )
    assert result.status == 201, result.body
    stored = result.json()["files"]
    assert [f["sha256"] for f in stored] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert all(f["metadata"] == metadata for f in stored)
    assert_only(stack.svc, list(zip(stored, contents, strict=False)))


# -- faults ----------------------------------------------------------------------------------------
def test_client_that_disconnects_halfway_leaves_nothing(stack):
    content = mp4_bytes(10 * MiB)
    body, content_type = form_body([("projectId", "p1")], [("file", "cut.mp4", content)])
    request_id = f"e2e-disconnect-{stack.mode}"
    head = request_head(
        content_type=content_type,
        length=50 * MiB,
        headers={**stack.auth, "X-Request-ID": request_id},
    )
    with socket.create_connection(("127.0.0.1", stack.nginx_port), timeout=30) as sock:
        sock.sendall(head)
        sock.sendall(body[:-100])  # ~10 MiB of 50 MiB declared, no closing boundary
        # The gateway is mid-upload: a temporary file / an open multipart upload exists.
        assert poll(lambda: leftovers(stack.svc)["pending_uploads"], timeout=10), (
            "the upload never started"
        )
    # The socket is closed: nginx drops the upstream connection, the gateway gets a short body.
    assert poll(lambda: nothing_left(stack.svc), timeout=10), leftovers(stack.svc)
    entry = poll(
        lambda: [e for e in gateway_log(stack) if e.get("requestId") == request_id], timeout=10
    )
    assert entry and entry[0]["outcome"] == "client_disconnected", entry
    assert_nothing_left(stack.svc)


def test_unauthenticated_large_upload_is_refused_before_the_body(stack):
    body, content_type = form_body([("projectId", "p1")], [("file", "x.mp4", mp4_bytes(MiB))])
    # 100 MiB declared, only the first 16 KiB sent: the answer must not wait for the rest.
    result = stack.raw(
        request_head(content_type=content_type, length=100 * MiB), [body[: 16 * 1024]]
    )
    assert_error(result, 401, "missing_token")
    assert result.headers["www-authenticate"].startswith("Bearer")
    bad = stack.raw(
        request_head(
            content_type=content_type,
            length=100 * MiB,
            headers={"Authorization": "Bearer not.a.token"},
        ),
        [body[: 16 * 1024]],
    )
    assert_error(bad, 401, "invalid_token")
    # Nothing stored; in S3 mode not even a multipart upload was started.
    assert_nothing_left(stack.svc)


def test_early_refusal_of_a_fully_sent_large_body_keeps_its_status(embedded, files):
    path = write_file(files / "big.mp4", mp4_bytes(64), 100 * MiB)
    statuses = []
    for _ in range(8):
        statuses.append(
            embedded.curl(
                "-F", "projectId=p1", "-F", f"file=@{path};type=video/mp4", token=None
            ).status
        )
        statuses.append(
            embedded.curl("-F", "projectId=p1", "-F", f"file=@{path};type=video/mp4").status
        )  # over 64 MiB
    assert_nothing_left(embedded.svc)
    assert statuses == [401, 413] * 8


def test_declared_length_over_the_gateway_cap_is_refused_by_the_gateway(embedded):
    body, content_type = form_body([("projectId", "p1")], [("file", "x.png", png_bytes(MiB))])
    result = embedded.raw(
        request_head(content_type=content_type, length=EMBEDDED_CAP + 1, headers=embedded.auth),
        [body[: 16 * 1024]],
    )
    error = assert_error(result, 413, "too_large")
    assert str(EMBEDDED_CAP) in error["error"]["message"]  # the gateway's message, not nginx's
    assert_nothing_left(embedded.svc)


def test_chunked_body_growing_over_the_gateway_cap_is_cut_and_aborted(embedded, files):
    body, content_type = form_body(
        [("projectId", "p1")], [("file", "huge.mp4", mp4_bytes(EMBEDDED_CAP + 4 * MiB))]
    )
    (files / "body").write_bytes(body)
    result = embedded.curl(
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        f"Content-Type: {content_type}",
        "--data-binary",
        f"@{files / 'body'}",
    )
    error = assert_error(result, 413, "too_large")
    assert "grew past" in error["error"]["message"]
    assert poll(lambda: nothing_left(embedded.svc), timeout=10), leftovers(embedded.svc)


def test_declared_length_over_nginx_limit_gets_the_json_error_shape(stack):
    body, content_type = form_body([("projectId", "p1")], [("file", "x.png", png_bytes(MiB))])
    request_id = f"e2e-too-large-{stack.mode}"
    result = stack.raw(
        request_head(
            content_type=content_type,
            length=500 * MiB + 1,
            headers={**stack.auth, "X-Request-ID": request_id},
        ),
        [body[: 16 * 1024]],
    )
    error = assert_error(result, 413, "too_large")
    assert error["requestId"] == request_id
    # nginx answered itself: the request never reached gunicorn.
    # (nginx writes its log line when it lets go of the connection: wait for it.)
    logged = poll(lambda: [e for e in stack.access_log_lines() if e["requestId"] == request_id])
    assert logged and logged[0]["status"] == 413 and logged[0]["upstreamStatus"] == ""
    assert not [e for e in gateway_log(stack) if e.get("requestId") == request_id]
    assert_nothing_left(stack.svc)


# -- refusals made before the app sees the request ---------------------------------------------------
MALFORMED_REQUESTS = {
    "content-length and chunked": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a header field over the limit": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a request line that is not one": b"NOT AN HTTP REQUEST\r\n\r\n",
    "bad chunk framing": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("to_gunicorn", [False, True], ids=["nginx", "gunicorn"])
@pytest.mark.parametrize(
    "request_bytes", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys()
)
def test_refusals_before_the_app_are_json_too(embedded, request_bytes, to_gunicorn):
    """nginx's and gunicorn's own answers to broken HTTP use the gateway's error shape."""
    from gateway.errors import CATALOGUE

    result = embedded.raw(request_bytes, to_gunicorn=to_gunicorn)
    assert 400 <= result.status < 500 or result.status == 501, (result.status, result.body)
    assert result.headers.get("content-type", "").startswith("application/json"), result.body
    body = result.json()
    assert set(body) == ERROR_SHAPE_KEYS and body["success"] is False
    assert body["error"]["code"] in CATALOGUE, body
    assert_nothing_left(embedded.svc)


# -- request ids and forwarded headers ----------------------------------------------------------
def test_request_id_generated_by_nginx_reaches_the_gateway_and_the_client(embedded, files):
    path = files / "a.png"
    path.write_bytes(png_bytes(10_000))
    result = embedded.curl("-F", "projectId=p1", "-F", f"file=@{path};type=image/png")
    assert result.status == 201, result.body
    request_id = result.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    # The same id in nginx's access log and in the gateway's own log line: nginx made it.
    logged = poll(lambda: [e for e in embedded.access_log_lines() if e["requestId"] == request_id])
    assert [e["status"] for e in logged] == [201]
    assert poll(lambda: [e for e in gateway_log(embedded) if e.get("requestId") == request_id])


def test_client_request_id_is_passed_through(embedded, files):
    path = files / "a.png"
    path.write_bytes(png_bytes(10_000))
    ok = embedded.curl(
        "-F",
        "projectId=p1",
        "-F",
        f"file=@{path};type=image/png",
        headers={"X-Request-ID": "client-trace.42:a_b-c"},
    )
    assert ok.status == 201 and ok.headers["x-request-id"] == "client-trace.42:a_b-c"
    refused = embedded.curl(
        "-F",
        "projectId=p1",
        "-F",
        f"file=@{path};type=image/png",
        token=None,
        headers={"X-Request-ID": "client-trace-43"},
    )
    assert assert_error(refused, 401, "missing_token")["requestId"] == "client-trace-43"
    # An id that is not well-formed is replaced by nginx's own, never echoed.
    odd = embedded.curl(
        "-F",
        "projectId=p1",
        "-F",
        f"file=@{path};type=image/png",
        token=None,
        headers={"X-Request-ID": "x" * 129},
    )
    assert re.fullmatch(r"[0-9a-f]{32}", assert_error(odd, 401, "missing_token")["requestId"])
    assert_only(embedded.svc, [(ok.json(), path.read_bytes())])


def test_client_cannot_spoof_forwarded_headers(embedded, files):
    path = files / "a.png"
    path.write_bytes(png_bytes(10_000))
    result = embedded.curl(
        "-F",
        "projectId=p1",
        "-F",
        f"file=@{path};type=image/png",
        headers={
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Port": "8443",
            "X-Forwarded-Prefix": "/evil",
        },
    )
    assert result.status == 201, result.body
    body = result.json()
    assert body["url"] == f"{embedded.url}/media/{body['s3Key']}"


def test_many_concurrent_uploads_and_a_stalled_client(stack, files):
    """24 curl uploads at once through nginx while another client has stopped halfway through its
    body: every one of them is stored exactly (no 5xx) while the stalled upload still holds its
    worker thread; then the stalled client sends the rest and is stored exactly too."""
    from concurrent.futures import ThreadPoolExecutor

    slow_content = mp4_bytes(20 * MiB, seed=9)  # half of it is more than one part
    body, content_type = form_body([("projectId", "p1")], [("file", "slow.mp4", slow_content)])
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", stack.nginx_port), timeout=120) as slow:
        slow.sendall(
            request_head(
                content_type=content_type,
                length=len(body),
                headers={"Authorization": f"Bearer {stack.token}"},
            )
        )
        slow.sendall(body[:half])
        # The stalled upload has begun writing (a multipart upload on S3, a temporary file
        # locally) before the others start.
        assert poll(lambda: leftovers(stack.svc)["pending_uploads"], timeout=30)
        contents = {f"f{i}.png": png_bytes(200_000 + i * 65_537, seed=i) for i in range(24)}
        for name, content in contents.items():
            (files / name).write_bytes(content)
        with ThreadPoolExecutor(12) as pool:
            results = list(
                pool.map(
                    lambda name: (
                        name,
                        stack.curl(
                            "-F", "projectId=p1", "-F", f"file=@{files / name};type=image/png"
                        ),
                    ),
                    contents,
                )
            )
        assert [r.status for _, r in results] == [201] * len(results), [
            r.body for _, r in results if r.status != 201
        ]
        slow.sendall(body[half:])
        reply = read_response(slow)
    assert reply.status == 201, reply.body
    assert_only(
        stack.svc,
        [(r.json(), contents[name]) for name, r in results] + [(reply.json(), slow_content)],
    )
