"""Legacy forms through the app, on every backend: file names as old browsers and form libraries
write them, and parts in a Content-Transfer-Encoding. Each stored file's bytes, size and SHA-256
are the decoded ones; each refusal leaves nothing (object, multipart upload, record)."""

from __future__ import annotations

import base64
import binascii
import hashlib

import pytest

from support import (
    MiB,
    assert_nothing_left,
    assert_stored,
    leftovers,
    mp4_bytes,
    png_bytes,
)

BOUNDARY = b"legacyBoundary42"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def part(disposition: bytes, data: bytes, *headers: bytes) -> bytes:
    lines = [b"Content-Disposition: form-data; " + disposition, *headers]
    return b"--" + BOUNDARY + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    project = part(b'name="projectId"', b"p1")
    return project + b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def post(client, auth, body: bytes):
    return client.post("/api/upload", data=body, headers={"Content-Type": CONTENT_TYPE, **auth})


def error_code(response) -> str:
    body = response.get_json()
    assert body["success"] is False
    return body["error"]["code"]


def b64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


# -- file names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "disposition, shown",
    [
        (rb'filename="C:\Users\me\cat.png"', "cat.png"),  # old IE-mode intranet forms
        (rb'filename="\\fileserver\photos\cat.png"', "cat.png"),
        (b'filename="/home/me/cat.png"', "cat.png"),
        (rb'filename="a\"b.png"', "a_b.png"),  # an escaped quote is part of the name
        (b'filename="???.png"', "unnamed.png"),
        (
            b"filename=\"cat.png\"; filename*=UTF-8''%E2%82%AC%20caf%C3%A9.png",
            "\u20ac caf\u00e9.png",
        ),
        (b"filename*=ISO-8859-1''%E9t%E9.png; filename=\"ete.png\"", "\u00e9t\u00e9.png"),
        (b"filename*=UTF-8''..%2F..%2Fetc%2Fpasswd.png", "passwd.png"),  # decoded, then stripped
    ],
)
def test_legacy_file_names_become_safe_display_names(client, auth, svc, disposition, shown):
    content = png_bytes(5000)
    response = post(client, auth, form(part(b'name="file"; ' + disposition, content)))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["originalName"] == shown
    assert body["s3Key"] == svc.store.full_key(f"projects/p1/media/{body['mediaId']}.png")
    assert_stored(svc, body, content)


@pytest.mark.parametrize("backend", ["s3"])
def test_the_object_is_served_under_the_reduced_name(client, auth, svc):
    response = post(
        client, auth, form(part(rb'name="file"; filename="C:\Users\me\cat.png"', png_bytes()))
    )
    assert response.status_code == 201, response.get_json()
    head = svc.store.client.head_object(Bucket=svc.store.bucket, Key=response.get_json()["s3Key"])
    assert head["ContentDisposition"] == "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"


# -- Content-Transfer-Encoding ---------------------------------------------------------------------------
QP_SAMPLE = png_bytes(3000) + b"\r\n--" + BOUNDARY + b" trailing \r\n=41"


@pytest.mark.parametrize(
    "encoding, content, sent",
    [
        ("base64", png_bytes(30_000), b64_lines(png_bytes(30_000))),
        ("quoted-printable", QP_SAMPLE, binascii.b2a_qp(QP_SAMPLE, istext=False)),
        ("binary", png_bytes(3000), png_bytes(3000)),
        ("8bit", png_bytes(3000), png_bytes(3000)),
    ],
)
def test_an_encoded_file_is_stored_decoded(client, auth, svc, encoding, content, sent):
    header = b"Content-Transfer-Encoding: " + encoding.encode()
    digest = hashlib.sha256(content).hexdigest()
    body = form(
        part(b'name="sha256"', digest.encode()),  # the checksum of the decoded bytes is verified
        part(b'name="file"; filename="cat.png"', sent, b"Content-Type: image/png", header),
    )
    response = post(client, auth, body)
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert answer["contentType"] == "image/png" and answer["sha256"] == digest
    assert_stored(svc, answer, content)


def test_a_base64_file_over_several_parts_is_exact(client, auth, svc):
    content = mp4_bytes(13 * MiB + 7)  # more than two S3 parts once decoded
    body = form(
        part(
            b'name="file"; filename="clip.mp4"',
            b64_lines(content),
            b"Content-Transfer-Encoding: base64",
        )
    )
    response = post(client, auth, body)
    assert response.status_code == 201, response.get_json()
    assert_stored(svc, response.get_json(), content)
    assert leftovers(svc)["pending_uploads"] == []


def test_an_encoded_text_field_is_decoded_metadata(client, auth, svc):
    body = form(
        part(b'name="caption"', b"Y2Fmw6k=", b"Content-Transfer-Encoding: base64"),
        part(b'name="file"; filename="a.png"', png_bytes()),
    )
    response = post(client, auth, body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["metadata"] == {"caption": "caf\u00e9"}


@pytest.mark.parametrize(
    "encoding, sent, code, status",
    [
        ("base64", b64_lines(png_bytes(20_000))[:-3] + b"!!!", "malformed_body", 400),
        ("base64", b64_lines(png_bytes(20_000)) + b"QQ", "malformed_body", 400),  # cut quantum
        ("quoted-printable", png_bytes(20_000).hex().encode() + b"=ZZ", "malformed_body", 400),
        ("x-uuencode", png_bytes(20_000), "unsupported_transfer_encoding", 415),
        ("gzip", png_bytes(20_000), "unsupported_transfer_encoding", 415),
    ],
)
def test_a_bad_encoding_after_a_stored_part_leaves_nothing(
    client, auth, svc, encoding, sent, code, status
):
    """A big first file is already streaming into a multipart upload when the second part's
    encoding fails: the answer says why, and nothing of either file stays."""
    first = part(b'name="files"; filename="big.mp4"', mp4_bytes(9 * MiB))
    second = part(
        b'name="files"; filename="b.png"',
        sent,
        b"Content-Transfer-Encoding: " + encoding.encode(),
    )
    response = post(client, auth, form(first, second))
    assert response.status_code == status and error_code(response) == code
    assert_nothing_left(svc)


def test_invalid_base64_in_the_only_file_leaves_nothing(client, auth, svc):
    sent = b64_lines(mp4_bytes(9 * MiB))
    sent = sent[: len(sent) // 2] + b"*" + sent[len(sent) // 2 :]
    body = form(part(b'name="file"; filename="v.mp4"', sent, b"Content-Transfer-Encoding: base64"))
    response = post(client, auth, body)
    assert response.status_code == 400 and error_code(response) == "malformed_body"
    assert response.get_json()["error"]["message"] == (
        "A base64 part is not valid base64 (RFC 2045)."
    )
    assert_nothing_left(svc)


def test_an_unterminated_quoted_file_name_leaves_nothing(client, auth, svc):
    body = form(part(b'name="file"; filename="C:\\Users\\me\\cat.png', png_bytes()))
    response = post(client, auth, body)
    assert response.status_code == 400 and error_code(response) == "malformed_body"
    assert_nothing_left(svc)
