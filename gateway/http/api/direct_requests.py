"""Direct uploads' JSON bodies, read at the edge into the direct service's typed requests
(gateway/uploads/direct.py ``Initiate``, ``SignRequest``; ``complete``'s claimed parts): the wire
format stops here. Only the shape is checked here; the limits (files, bytes, types) are the
service's."""

from __future__ import annotations

from typing import Any, TypeGuard, cast

from gateway import errors
from gateway.uploads.direct import Initiate, Promise, SignRequest
from gateway.uploads.direct_verify import ClaimedParts
from gateway.uploads.form import SHA256_RE


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def initiate(body: Any) -> Initiate:
    """``{projectId, files: [{filename, contentType, size, sha256?}], signRequests?}``."""
    if not isinstance(body, dict):
        raise errors.InvalidJson("The body must be a JSON object.")
    project_id = body.get("projectId")
    if not isinstance(project_id, str):
        raise errors.MissingProjectId()
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise errors.InvalidFiles("files must be a non-empty list.")
    promises = tuple(_promise(item) for item in files)
    # signRequests: the client sends every S3 request itself, each signed by POST
    # /api/uploads/sign (Uppy's @uppy/aws-s3 signRequest); it creates a multipart upload.
    client_signs = body.get("signRequests", False)
    if not isinstance(client_signs, bool):
        raise errors.InvalidJson("signRequests must be true or false.")
    return Initiate(project_id, promises, client_signs=client_signs)


def _promise(item: Any) -> Promise:
    if not isinstance(item, dict):
        raise errors.InvalidFiles("Each file must be an object.")
    filename, content_type = item.get("filename", ""), item.get("contentType")
    size, sha256 = item.get("size"), item.get("sha256")
    if not isinstance(filename, str):
        raise errors.InvalidFiles("filename must be a string.")
    if not _is_int(size) or size <= 0:
        raise errors.InvalidSize()
    if not isinstance(content_type, str):
        raise errors.UnsupportedType(f"contentType {content_type!r} is not a MIME type.")
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256)):
        raise errors.InvalidSha256("sha256 must be 64 lowercase hexadecimal characters.")
    return Promise(filename, content_type, size, sha256)


def claimed_parts(body: Any) -> ClaimedParts | None:
    """complete's ``parts``: (partNumber, ETag) pairs, the ETags without their quotes. None
    when the body has no list of ``{partNumber, etag}`` (only a multipart upload S3 still holds
    needs one: 400 invalid_parts there; a single upload's complete ignores the body)."""
    claimed = body.get("parts") if isinstance(body, dict) else None
    if not isinstance(claimed, list) or not all(
        isinstance(p, dict) and _is_int(p.get("partNumber")) and isinstance(p.get("etag"), str)
        for p in claimed
    ):
        return None
    return tuple((p["partNumber"], p["etag"].strip('"')) for p in claimed)


def sign(body: Any) -> SignRequest:
    """``{method, key, uploadId?, partNumber?, contentType?, expiresIn?}``, as @uppy/aws-s3's
    ``signRequest`` sends it (400 invalid_sign_request; a partNumber not an integer: 400
    invalid_part_range)."""
    if not isinstance(body, dict):
        raise errors.InvalidSignRequest("The body must be a JSON object.")
    method, key = body.get("method"), body.get("key")
    s3_upload_id, part = body.get("uploadId"), body.get("partNumber")
    expires_in = body.get("expiresIn")
    if method not in ("PUT", "POST", "GET", "DELETE") or not isinstance(key, str) or not key:
        raise errors.InvalidSignRequest("method must be PUT, POST, GET or DELETE, with a key.")
    if s3_upload_id is not None and (not isinstance(s3_upload_id, str) or not s3_upload_id):
        raise errors.InvalidSignRequest("uploadId must be a non-empty string.")
    if part is not None and not _is_int(part):
        raise errors.InvalidPartRange("partNumber must be an integer.")
    if (part is not None) != (method == "PUT" and s3_upload_id is not None):
        raise errors.InvalidSignRequest("partNumber goes with a PUT to an uploadId, only there.")
    if method == "DELETE" and s3_upload_id is None:
        raise errors.InvalidSignRequest("Objects are deleted through the gateway, not signed.")
    if expires_in is not None and (not _is_int(expires_in) or expires_in < 1):
        raise errors.InvalidSignRequest("expiresIn must be a positive number of seconds.")
    return SignRequest(cast(Any, method), key, s3_upload_id, part, expires_in)
