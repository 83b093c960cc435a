"""Legacy forms end to end: real curl -> real nginx -> real gunicorn, embedded mode (nginx serves
/media/ itself), with an allow-list of any type. curl writes the Windows path raw and encodes
parts itself (``;encoder=base64``, ``;encoder=quoted-printable``), as old form libraries do."""

from __future__ import annotations

import hashlib

import pytest
import requests

from e2e_harness import gateway_stack
from support import assert_nothing_left, assert_stored, mp4_bytes, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def legacy_stack(tmp_path_factory):
    with gateway_stack(
        tmp_path_factory.mktemp("e2e-legacy"),
        mode="embedded",
        GATEWAY_ALLOWED_TYPES="image/*,video/*,text/*,*/*",
    ) as stack:
        yield stack
        stack.reset()


@pytest.fixture
def legacy(legacy_stack):
    legacy_stack.reset()
    yield legacy_stack
    print(legacy_stack.logs())  # shown only when the test failed


def test_a_windows_path_from_curl_is_stored_under_its_last_segment(legacy, tmp_path):
    content = png_bytes(40_000)
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    result = legacy.curl("-F", "projectId=p1", "-F", rf"file=@{path};filename=C:\Users\me\cat.png")
    assert result.status == 201, result.body
    body = result.json()
    assert body["originalName"] == "cat.png" and body["contentType"] == "image/png"
    assert body["s3Key"] == f"projects/p1/media/{body['mediaId']}.png"
    assert_stored(legacy.svc, body, content)
    served = requests.get(body["url"], timeout=10)
    assert served.status_code == 200 and served.content == content
    assert served.headers["Content-Type"] == "image/png"
    assert "Content-Disposition" not in served.headers  # shown inline


@pytest.mark.parametrize("encoder", ["base64", "quoted-printable"])
def test_a_part_curl_encodes_is_stored_decoded(legacy, tmp_path, encoder):
    content = mp4_bytes(3 * 1024 * 1024 + 11)  # many 1 MiB reads: quanta and escapes cut by them
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    result = legacy.curl(
        "-F", "projectId=p1", "-F", f"sha256={digest}", "-F", f"file=@{path};encoder={encoder}"
    )
    assert result.status == 201, result.body
    body = result.json()
    assert body["contentType"] == "video/mp4" and body["sha256"] == digest
    assert body["size"] == len(content)
    assert_stored(legacy.svc, body, content)


def test_a_broken_encoded_part_leaves_nothing(legacy):
    """The first 400,000 bytes decode (and are written) before the bad byte arrives."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b"QUJD" * 100_000 + b"*\r\n--b--\r\n"
    )
    response = requests.post(
        legacy.url + "/api/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b", **legacy.auth},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_body"
    assert_nothing_left(legacy.svc)


@pytest.mark.parametrize(
    "name, content, served_type, mime",
    [
        (
            "x.svg",
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>",
            "application/octet-stream",
            "image/svg+xml",
        ),
        ("x.html", b"<!DOCTYPE html><script>1</script>", "application/octet-stream", "text/html"),
        (
            "x.bin",
            b"\x00\x01 no known signature" * 10,
            "application/octet-stream",
            "application/octet-stream",
        ),
        ("x.txt", b"plain words\n", "text/plain", "text/plain"),
    ],
)
def test_nginx_serves_active_and_unknown_content_only_as_a_download(
    legacy, tmp_path, name, content, served_type, mime
):
    path = tmp_path / name
    path.write_bytes(content)
    result = legacy.curl("-F", "projectId=p1", "-F", f"file=@{path};type=image/png")
    assert result.status == 201, result.body
    body = result.json()
    assert body["contentType"] == mime
    served = requests.get(body["url"], timeout=10)
    assert served.status_code == 200 and served.content == content
    assert served.headers["Content-Type"].partition(";")[0] == served_type
    assert served.headers["Content-Disposition"] == "attachment"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
