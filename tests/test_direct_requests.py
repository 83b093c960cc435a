"""Direct uploads' JSON read at the edge (gateway/http/api/direct_requests.py) into the service's
typed requests, on parsed JSON values: every refusal with its exact code, and what is kept.
The limits (files, bytes, types) are the service's, through HTTP in test_direct.py; the part
size of a multipart upload is ``DirectOptions.part_size_for``."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.config import MiB
from gateway.http.api import direct_requests as read
from gateway.uploads.direct import DirectOptions, Initiate, Promise, SignRequest

SHA = "ab" * 32
FILE = {"filename": "a.png", "contentType": "image/png", "size": 10}


def code_of(call, *args) -> str:
    with pytest.raises(errors.GatewayError) as refused:
        call(*args)
    return refused.value.code


def test_initiate_reads_the_batch():
    body = {
        "projectId": "p1",
        "files": [FILE, {"contentType": "video/mp4", "size": 1, "sha256": SHA}],
        "signRequests": True,
    }
    assert read.initiate(body) == Initiate(
        "p1",
        (Promise("a.png", "image/png", 10, None), Promise("", "video/mp4", 1, SHA)),
        client_signs=True,
    )
    plain = read.initiate({"projectId": "", "files": [{**FILE, "sha256": None}]})
    assert plain.client_signs is False and plain.files[0].sha256 is None


@pytest.mark.parametrize(
    "body, code",
    [
        ([], "invalid_json"),
        ("p1", "invalid_json"),
        ({"files": [FILE]}, "missing_project_id"),
        ({"projectId": 1, "files": [FILE]}, "missing_project_id"),
        ({"projectId": "p1"}, "invalid_files"),
        ({"projectId": "p1", "files": []}, "invalid_files"),
        ({"projectId": "p1", "files": FILE}, "invalid_files"),
        ({"projectId": "p1", "files": [FILE, "a.png"]}, "invalid_files"),
        ({"projectId": "p1", "files": [FILE], "signRequests": "yes"}, "invalid_json"),
        ({"projectId": "p1", "files": [FILE], "signRequests": None}, "invalid_json"),
    ],
)
def test_initiate_refuses_a_batch_of_the_wrong_shape(body, code):
    assert code_of(read.initiate, body) == code


@pytest.mark.parametrize(
    "change, code",
    [
        ({"filename": None}, "invalid_files"),
        ({"filename": 5}, "invalid_files"),
        ({"size": None}, "invalid_size"),
        ({"size": 0}, "invalid_size"),
        ({"size": -1}, "invalid_size"),
        ({"size": True}, "invalid_size"),
        ({"size": 1.0}, "invalid_size"),
        ({"size": "10"}, "invalid_size"),
        ({"contentType": None}, "unsupported_type"),
        ({"contentType": ["image/png"]}, "unsupported_type"),
        ({"sha256": SHA.upper()}, "invalid_sha256"),
        ({"sha256": SHA[:-1]}, "invalid_sha256"),
        ({"sha256": SHA + "\n"}, "invalid_sha256"),
        ({"sha256": 1}, "invalid_sha256"),
    ],
)
def test_initiate_refuses_a_file_of_the_wrong_shape(change, code):
    assert code_of(read.initiate, {"projectId": "p1", "files": [FILE, {**FILE, **change}]}) == code


def test_claimed_parts_are_pairs_without_the_etags_quotes():
    body = {"parts": [{"partNumber": 2, "etag": '"b"'}, {"partNumber": 1, "etag": "a"}]}
    assert read.claimed_parts(body) == ((2, "b"), (1, "a"))
    assert read.claimed_parts({"parts": []}) == ()


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {},
        {"parts": None},
        {"parts": {"partNumber": 1, "etag": "a"}},
        {"parts": ["a"]},
        {"parts": [{"partNumber": 1}]},
        {"parts": [{"etag": "a"}]},
        {"parts": [{"partNumber": "1", "etag": "a"}]},
        {"parts": [{"partNumber": True, "etag": "a"}]},
        {"parts": [{"partNumber": 1, "etag": 1}]},
        {"parts": [{"partNumber": 1, "etag": "a"}, {"partNumber": 2}]},
    ],
)
def test_claimed_parts_of_any_other_shape_are_none(body):
    """None: the service refuses it (400 invalid_parts) only where it needs the parts."""
    assert read.claimed_parts(body) is None


def test_sign_reads_each_request_uppy_sends():
    key = "uploads/projects/p1/media/x.png"
    assert read.sign({"method": "POST", "key": key}) == SignRequest("POST", key, None, None, None)
    part = {"method": "PUT", "key": key, "uploadId": "u", "partNumber": 3, "expiresIn": 1}
    assert read.sign(part) == SignRequest("PUT", key, "u", 3, 1)
    delete = {"method": "DELETE", "key": key, "uploadId": "u", "contentType": "x"}
    assert read.sign(delete) == SignRequest("DELETE", key, "u", None, None)


@pytest.mark.parametrize(
    "body, code",
    [
        ([], "invalid_sign_request"),
        ({"method": "PATCH", "key": "k"}, "invalid_sign_request"),
        ({"method": "put", "key": "k"}, "invalid_sign_request"),
        ({"method": "POST"}, "invalid_sign_request"),
        ({"method": "POST", "key": ""}, "invalid_sign_request"),
        ({"method": "POST", "key": 1}, "invalid_sign_request"),
        ({"method": "GET", "key": "k", "uploadId": ""}, "invalid_sign_request"),
        ({"method": "GET", "key": "k", "uploadId": 5}, "invalid_sign_request"),
        ({"method": "PUT", "key": "k", "uploadId": "u", "partNumber": "1"}, "invalid_part_range"),
        ({"method": "PUT", "key": "k", "uploadId": "u", "partNumber": True}, "invalid_part_range"),
        ({"method": "PUT", "key": "k", "uploadId": "u"}, "invalid_sign_request"),
        ({"method": "PUT", "key": "k", "partNumber": 1}, "invalid_sign_request"),
        ({"method": "GET", "key": "k", "uploadId": "u", "partNumber": 1}, "invalid_sign_request"),
        ({"method": "DELETE", "key": "k"}, "invalid_sign_request"),
        ({"method": "POST", "key": "k", "expiresIn": 0}, "invalid_sign_request"),
        ({"method": "POST", "key": "k", "expiresIn": True}, "invalid_sign_request"),
        ({"method": "POST", "key": "k", "expiresIn": 1.5}, "invalid_sign_request"),
    ],
)
def test_sign_refuses_what_is_no_such_request(body, code):
    assert code_of(read.sign, body) == code


def options(part_size: int) -> DirectOptions:
    return DirectOptions(
        allowed_types=("image/*",),
        max_filename_chars=255,
        max_bytes=1,
        max_files=1,
        max_batch_bytes=1,
        max_pending=1,
        single_put_max=1,
        part_size=part_size,
        part_urls_per_page=1,
        url_ttl=1,
        s3_verifies_sha256=False,
        processing=True,
    )


def test_the_part_size_is_the_setting_until_s3s_10000_parts_need_more():
    at_least = options(8 * MiB)
    assert at_least.part_size_for(1) == 8 * MiB
    assert at_least.part_size_for(10_000 * 8 * MiB) == 8 * MiB
    assert at_least.part_size_for(10_000 * 8 * MiB + 1) == 9 * MiB  # whole MiB
    assert at_least.part_size_for(10_000 * 20 * MiB) == 20 * MiB
    assert options(5 * MiB).part_size_for(10_000 * 5 * MiB + 10_000) == 6 * MiB
