"""POST /api/upload through the Flask test client, against every backend (local, S3, DynamoDB)."""
from __future__ import annotations

import hashlib

import pytest

from support import (MiB, assert_nothing_left, assert_stored, form_body, jpeg_bytes, leftovers,
                     mp4_bytes, png_bytes)


def post(client, body_and_type, headers=None, query=""):
    body, content_type = body_and_type
    return client.post(f"/api/upload{query}", data=body,
                       headers={"Content-Type": content_type, **(headers or {})})


def test_one_small_file_is_stored_with_its_record(client, auth, svc):
    content = png_bytes(30_000)
    response = post(client, form_body([("projectId", "p1"), ("caption", "a cat")],
                                      [("file", "cat.png", content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["success"] is True and body["contentType"] == "image/png"
    assert body["s3Key"] == f"projects/p1/media/{body['mediaId']}.png"
    assert body["metadata"] == {"caption": "a cat"} and body["originalName"] == "cat.png"
    assert_stored(svc, body, content)


def test_file_larger_than_several_parts_is_exact(client, auth, svc):
    content = mp4_bytes(21 * MiB + 12345)
    response = post(client, form_body([("projectId", "p1")], [("file", "clip.mp4", content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["fileType"] == "video"
    assert_stored(svc, body, content)
    assert leftovers(svc)["pending_uploads"] == []


def test_several_files_in_one_request(client, auth, svc):
    contents = [png_bytes(10_000), mp4_bytes(9 * MiB), jpeg_bytes(50_000)]
    files = [("files", f"f{i}.bin", c) for i, c in enumerate(contents)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 201, response.get_json()
    listed = response.get_json()["files"]
    assert [f["contentType"] for f in listed] == ["image/png", "video/mp4", "image/jpeg"]
    for body, content in zip(listed, contents):
        assert_stored(svc, body, content)
    assert leftovers(svc)["pending_uploads"] == []


def test_disallowed_second_file_leaves_nothing_of_the_first(client, auth, svc):
    files = [("files", "ok.png", png_bytes(9 * MiB)), ("files", "evil.png", b"MZ" + b"\0" * 9000)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_type"
    assert_nothing_left(svc)


def test_declared_sha256_is_verified(client, auth, svc):
    content = png_bytes(12 * MiB)
    good = hashlib.sha256(content).hexdigest()
    ok = post(client, form_body([("projectId", "p1"), ("sha256", good)], [("file", "a.png", content)]), auth)
    assert ok.status_code == 201 and ok.get_json()["sha256"] == good
    svc.store.delete(ok.get_json()["s3Key"])
    svc.records.delete(ok.get_json()["mediaId"])
    bad = post(client, form_body([("projectId", "p1"), ("sha256", "0" * 64)], [("file", "a.png", content)]), auth)
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "checksum_mismatch"
    assert_nothing_left(svc)
