"""gateway/storage/integrity.py: the checksums a write carries, the ETag check, and what
``flask check`` concludes from a probe (the probe itself: tests/test_s3_integrity.py)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from botocore.exceptions import ClientError

from gateway.errors import StorageCorrupted, StorageError, StorageUnavailable
from gateway.storage.integrity import CRC32C, MD5, Probe, etag_holds, holds, report, sums
from gateway.storage.s3 import translate

DATA = b"The quick brown fox jumps over the lazy dog"
MD5_HEX = "9e107d9d372bb6826bd81d3542a419d6"  # RFC 1321's test suite
CRC32C_B64 = base64.b64encode((0x22620404).to_bytes(4, "big")).decode()  # CRC-32C of DATA


def test_md5_mode_sends_content_md5_and_crc32c():
    sent = sums(DATA, MD5)
    assert sent.headers == {
        "x-amz-checksum-crc32c": CRC32C_B64,
        "Content-MD5": base64.b64encode(bytes.fromhex(MD5_HEX)).decode(),
    }
    assert sent.md5 == MD5_HEX and sent.crc32c == CRC32C_B64


def test_crc32c_mode_sends_only_crc32c_and_checks_no_etag():
    sent = sums(DATA, CRC32C)
    assert sent.headers == {"x-amz-checksum-crc32c": CRC32C_B64}
    assert sent.md5 == ""
    assert etag_holds('"anything"', sent) and etag_holds("", sent)


def test_a_request_with_its_own_checksum_header_carries_no_crc32c():
    assert sums(DATA, MD5, with_crc32c=False).headers == {
        "Content-MD5": base64.b64encode(bytes.fromhex(MD5_HEX)).decode()
    }
    assert sums(DATA, CRC32C, with_crc32c=False).headers == {}


def test_sums_take_a_bytearray():
    assert sums(bytearray(DATA), MD5) == sums(DATA, MD5)


def test_crc32c_is_not_zlibs_crc32():
    assert base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode() != CRC32C_B64


@pytest.mark.parametrize(
    "etag", [f'"{MD5_HEX}"', MD5_HEX, f'"{MD5_HEX.upper()}"', f' "{MD5_HEX}" ']
)
def test_an_etag_that_is_the_md5_holds(etag):
    assert etag_holds(etag, sums(DATA, MD5))


@pytest.mark.parametrize(
    "etag",
    [
        f'"{hashlib.md5(DATA + b"!").hexdigest()}"',
        "",
        '""',  # Ceph's CompleteMultipartUpload answer: never accepted as a part's ETag
        f'"{MD5_HEX}-1"',  # a multipart ETag
        f'"{MD5_HEX[:-1]}"',
    ],
)
def test_an_etag_that_is_not_the_md5_fails(etag):
    assert not etag_holds(etag, sums(DATA, MD5))


# -- S3's answers ----------------------------------------------------------------------------------
def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize("code", ["BadDigest", "XAmzContentSHA256Mismatch"])
def test_a_body_refused_as_not_matching_its_checksum_is_storage_corrupted(code):
    error = translate(client_error(code, 400), "uploading a part")
    assert type(error) is StorageCorrupted
    assert (error.status, error.code) == (502, "storage_corrupted")
    assert "while uploading a part" in error.message


@pytest.mark.parametrize(
    "code,status,kind",
    [
        ("InvalidDigest", 400, StorageError),  # a malformed Content-MD5: not corruption
        ("AccessDenied", 403, StorageError),
        ("SlowDown", 503, StorageUnavailable),
    ],
)
def test_other_refusals_are_not_corruption(code, status, kind):
    assert type(translate(client_error(code, status), "x")) is kind


# -- flask check's verdict --------------------------------------------------------------------------
def probe(**overrides) -> Probe:
    values = {
        "verifies_md5": False,
        "verifies_crc32c": False,
        "etag_is_md5": True,
        "addressing": "path-style",
        "bucket_url": "http://127.0.0.1:9000/b",
        "cors": None,
        "notifications": (),
    }
    values.update(overrides)
    return Probe(**values)  # type: ignore[arg-type]


# (verifies_md5, verifies_crc32c, etag_is_md5) -> holds in md5 mode, in crc32c mode
HOLDS = {
    (False, False, True): (True, False),  # moto
    (True, False, True): (True, False),  # Ceph RGW 16
    (True, True, True): (True, True),  # AWS S3
    (True, True, False): (False, True),  # AWS S3 with SSE-KMS: ETags are not MD5s
    (False, False, False): (False, False),
    (True, False, False): (False, False),
    (False, True, False): (False, True),
}


@pytest.mark.parametrize("found", HOLDS, ids=str)
def test_holds(found):
    md5, crc, etag = found
    found_probe = probe(verifies_md5=md5, verifies_crc32c=crc, etag_is_md5=etag)
    assert (holds(found_probe, MD5), holds(found_probe, CRC32C)) == HOLDS[found]


def test_report_of_a_store_that_verifies_nothing():
    assert report(probe(), MD5) == [
        "addressing: path-style (http://127.0.0.1:9000/b)",
        "refuses a wrong Content-MD5: NO",
        "refuses a wrong x-amz-checksum-crc32c: NO",
        "ETag of a PutObject is the MD5 of its bytes: yes",
        "CORS: none on the bucket (browsers cannot send direct uploads themselves)",
        "notifications: none configured on the bucket",
        "the store verifies no checksum it is sent",
        "GATEWAY_S3_INTEGRITY=md5: integrity holds: the store refuses nothing; the gateway"
        " compares each write's ETag with the MD5 it sent",
    ]


def test_report_names_how_the_mode_was_set():
    assert report(probe(), MD5, "auto (md5)")[-1].startswith(
        "GATEWAY_S3_INTEGRITY=auto (md5): integrity holds:"
    )
    assert report(probe(), CRC32C)[-1].startswith("GATEWAY_S3_INTEGRITY=crc32c: integrity is NOT")


def test_report_lists_cors_rules_and_notifications():
    lines = report(probe(cors=("GET from *", "PUT from x"), notifications=("a", "b")), MD5)
    assert lines[4:8] == ["CORS: GET from *", "CORS: PUT from x", "notifications: a",
                          "notifications: b"]  # fmt: skip


VERDICTS = {
    ((True, False, True), MD5): "integrity holds: the store refuses a body whose Content-MD5"
    " differs, and the gateway compares each write's ETag with the MD5 it sent",
    ((True, True, True), MD5): "integrity holds: the store refuses a body whose Content-MD5"
    " differs, and the gateway compares each write's ETag with the MD5 it sent (the store"
    " verifies CRC32C: GATEWAY_S3_INTEGRITY=crc32c would hold too, with less CPU)",
    ((True, True, False), MD5): "uploads would FAIL: the ETags are not MD5s, so every write's"
    " check refuses it; the store verifies CRC32C: set GATEWAY_S3_INTEGRITY=crc32c",
    ((True, False, False), MD5): "uploads would FAIL: the ETags are not MD5s, so every write's"
    " check refuses it",
    ((True, True, False), CRC32C): "integrity holds: the store refuses a body whose CRC32C differs",
    ((True, False, True), CRC32C): "integrity is NOT kept: the store stores a body whose CRC32C"
    " differs; set GATEWAY_S3_INTEGRITY=md5",
    ((False, False, False), CRC32C): "integrity is NOT kept: the store stores a body whose"
    " CRC32C differs",
}


@pytest.mark.parametrize("case", VERDICTS, ids=str)
def test_verdict(case):
    (md5, crc, etag), mode = case
    lines = report(probe(verifies_md5=md5, verifies_crc32c=crc, etag_is_md5=etag), mode)
    assert lines[-1] == f"GATEWAY_S3_INTEGRITY={mode}: {VERDICTS[case]}"
    assert ("the store verifies no checksum it is sent" in lines) == (not md5 and not crc)
    assert lines[1:4] == [
        f"refuses a wrong Content-MD5: {'yes' if md5 else 'NO'}",
        f"refuses a wrong x-amz-checksum-crc32c: {'yes' if crc else 'NO'}",
        f"ETag of a PutObject is the MD5 of its bytes: {'yes' if etag else 'NO'}",
    ]
