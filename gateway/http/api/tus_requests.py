"""tus's request headers, read at the edge into the tus service's typed requests
(gateway/uploads/tus.py ``CreateUpload``, ``PatchChunk``): the wire format stops here. Malformed
headers are 400 ``invalid_tus_header`` (an unknown checksum algorithm: ``unsupported_checksum``)."""

from __future__ import annotations

import base64
import binascii
import re

from werkzeug.datastructures import Headers

from gateway import errors
from gateway.uploads.tus import CHECKSUMS, CreateUpload, PatchChunk

_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_INT_RE = re.compile(r"[0-9]{1,19}")
MAX_METADATA_VALUE = 4096


def creation(headers: Headers) -> CreateUpload:
    """Upload-Metadata, Upload-Length or Upload-Defer-Length, Upload-Concat."""
    metadata = tuple(parse_metadata(headers.get("Upload-Metadata")))
    concat = headers.get("Upload-Concat")
    length = parse_int(headers.get("Upload-Length"), "Upload-Length")
    defer = headers.get("Upload-Defer-Length")
    if concat is not None and concat.startswith("final;"):
        if length is not None or defer is not None:
            raise errors.InvalidTusHeader("A final upload takes no Upload-Length.")
        urls = concat[len("final;") :].split()
        if not urls:
            raise errors.InvalidTusHeader("Upload-Concat: final needs the partial uploads.")
        partials = tuple(url.rstrip("/").rsplit("/", 1)[-1] for url in urls)
        return CreateUpload(metadata, None, concat="final", partials=partials)
    if concat is not None and concat.strip() != "partial":
        raise errors.InvalidTusHeader("Upload-Concat must be 'partial' or 'final;<urls>'.")
    if length is None and defer != "1":
        raise errors.InvalidTusHeader("Upload-Length or Upload-Defer-Length: 1 is required.")
    if length is not None and defer is not None:
        raise errors.InvalidTusHeader("Upload-Length and Upload-Defer-Length exclude each other.")
    return CreateUpload(metadata, length, concat="partial" if concat is not None else "")


def first_chunk(headers: Headers, *, content_length: int | None) -> PatchChunk:
    """The body of a creation (creation-with-upload): at offset 0, its length the creation's."""
    return PatchChunk(
        offset=0,
        checksum=parse_checksum(headers.get("Upload-Checksum")),
        content_length=content_length,
    )


def chunk(headers: Headers, *, offset: str | None, content_length: int | None) -> PatchChunk:
    """A PATCH's (or a creation-with-upload's) Upload-Offset, Upload-Length, Upload-Checksum."""
    at = parse_int(offset, "Upload-Offset")
    if at is None:
        raise errors.InvalidTusHeader("Upload-Offset is required.")
    return PatchChunk(
        offset=at,
        length=parse_int(headers.get("Upload-Length"), "Upload-Length"),
        checksum=parse_checksum(headers.get("Upload-Checksum")),
        content_length=content_length,
    )


def parse_int(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    if not _INT_RE.fullmatch(value.strip()):
        raise errors.InvalidTusHeader(f"{what} must be a non-negative integer.")
    return int(value.strip())


def parse_metadata(header: str | None) -> list[tuple[str, str]]:
    """Upload-Metadata: ``key base64value`` pairs separated by commas (a value may be empty)."""
    pairs: list[tuple[str, str]] = []
    if not header or not header.strip():
        return pairs
    for item in header.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not _KEY_RE.fullmatch(key) or any(k == key for k, _ in pairs):
            raise errors.InvalidTusHeader("Upload-Metadata keys must be unique ASCII tokens.")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise errors.InvalidTusHeader(
                f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text."
            ) from None
        if len(value) > MAX_METADATA_VALUE:
            raise errors.InvalidTusHeader(f"Upload-Metadata value of {key!r} is too long.")
        pairs.append((key, value))
    return pairs


def encode_metadata(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in pairs)


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise errors.UnsupportedChecksum(
            f"Upload-Checksum algorithm {algorithm!r}; supported: {', '.join(CHECKSUMS)}."
        )
    try:
        return algorithm, base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidTusHeader("Upload-Checksum must be '<algorithm> <base64>'.") from None
