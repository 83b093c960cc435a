"""Direct-to-S3 uploads: presigned PUT/POST and multipart part URLs, and what S3 really holds.

A capability of the S3 store only (the embedded local store has no public upload endpoint).
Everything a client sends is checked again by the gateway before it is accepted: these calls
report what S3 holds, they do not trust the client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from gateway.errors import StorageError, UploadChanged
from gateway.storage import ObjectHead, PartInfo
from gateway.storage.presign import PartUrl, PresignedPost, PresignedRequest
from gateway.storage.s3 import S3ObjectStore, _call, translate

log = logging.getLogger(__name__)


def _changed(exc: ClientError) -> bool:
    """S3's answer to a read or copy of one ETag (IfMatch / CopySourceIfMatch) when that version
    is no longer there: replaced (412) or deleted (404, e.g. by a concurrent complete)."""
    return exc.response.get("Error", {}).get("Code") in (
        "PreconditionFailed",
        "NoSuchKey",
    ) or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (412, 404)


class S3DirectUploads:
    """The ``DirectStore`` of S3 (gateway/storage/presign.py)."""

    def __init__(self, store: S3ObjectStore) -> None:
        self.store = store
        self.client = store.client
        self.bucket = store.bucket

    def full_key(self, key: str) -> str:
        return self.store.full_key(key)

    def relative_key(self, full_key: str) -> str | None:
        """The gateway's key of a bucket key (None: outside the store's prefix)."""
        prefix = f"{self.store.prefix}/" if self.store.prefix else ""
        return full_key[len(prefix) :] if full_key.startswith(prefix) else None

    # -- handing out permission ------------------------------------------------------------------
    def presign_put(
        self, key: str, *, content_type: str, size: int, sha256_b64: str | None, expires_in: int
    ) -> PresignedRequest:
        """A PUT URL bound to the type, the length and (when promised) the SHA-256."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.full_key(key),
            "ContentType": content_type,
            "ContentLength": size,
        }
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        if sha256_b64:
            params["ChecksumSHA256"] = sha256_b64
            headers["x-amz-checksum-sha256"] = sha256_b64
        url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        return PresignedRequest(url, headers)

    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int
    ) -> PresignedPost:
        """A POST policy with exact content-length-range and content type conditions."""
        fields = {"Content-Type": content_type}
        conditions: list[Any] = [
            {"Content-Type": content_type},
            ["content-length-range", size, size],
        ]
        post = self.client.generate_presigned_post(
            self.bucket,
            self.full_key(key),
            Fields=fields,
            Conditions=conditions,
            ExpiresIn=expires_in,
        )
        return PresignedPost(post["url"], post["fields"])

    def presign(
        self, operation: str, key: str, *, expires_in: int, method: str, **params: Any
    ) -> str:
        """A URL for one S3 operation on ``key`` (what a browser's S3 client sends itself)."""
        return str(
            self.client.generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket, "Key": self.full_key(key), **params},
                ExpiresIn=expires_in,
                HttpMethod=method,
            )
        )

    def start_multipart(
        self, key: str, *, content_type: str, content_disposition: str, metadata: dict[str, str]
    ) -> str:
        return str(
            _call(
                "starting a multipart upload",
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.full_key(key),
                ContentType=content_type,
                ContentDisposition=content_disposition,
                Metadata=metadata,
            )["UploadId"]
        )

    def presign_parts(
        self, key: str, upload_id: str, parts: list[tuple[int, int]], expires_in: int
    ) -> list[PartUrl]:
        """One URL per (number, size), each bound (SigV4 signed header) to that exact length."""
        return [
            PartUrl(
                number,
                size,
                self.client.generate_presigned_url(
                    "upload_part",
                    ExpiresIn=expires_in,
                    Params={
                        "Bucket": self.bucket,
                        "Key": self.full_key(key),
                        "UploadId": upload_id,
                        "PartNumber": number,
                        "ContentLength": size,
                    },
                ),
            )
            for number, size in parts
        ]

    # -- what S3 holds ---------------------------------------------------------------------------
    def list_parts(self, key: str, upload_id: str) -> list[PartInfo] | None:
        """The parts S3 has received, or None when the multipart upload no longer exists."""
        parts: list[PartInfo] = []
        try:
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(
                Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id
            ):
                parts += [
                    PartInfo(p["PartNumber"], p["Size"], p["ETag"].strip('"'))
                    for p in page.get("Parts", [])
                ]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return None
            raise translate(exc, "listing parts") from exc
        except BotoCoreError as exc:
            raise translate(exc, "listing parts") from exc
        return parts

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> None:
        _call(
            "completing the multipart upload",
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self.full_key(key),
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in parts]
            },
        )

    def multipart_uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads S3 holds for exactly ``key`` (a signRequests client
        creates its own: the gateway learns an id only when a request names it)."""
        full = self.full_key(key)
        ids: list[str] = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                ids += [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == full]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "listing multipart uploads") from exc
        return ids

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise translate(exc, "aborting a multipart upload") from exc
        except BotoCoreError as exc:
            raise translate(exc, "aborting a multipart upload") from exc

    def head(self, key: str) -> ObjectHead | None:
        response = self.store.head(key)
        if response is None:
            return None
        return ObjectHead(
            size=response["ContentLength"],
            content_type=response.get("ContentType", ""),
            etag=response.get("ETag", ""),
        )

    def _get(self, key: str, if_match: str | None, **kwargs: Any) -> dict[str, Any]:
        """get_object, only of the version whose ETag is ``if_match`` (when given)."""
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            answer: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket, Key=self.full_key(key), **kwargs
            )
            return answer
        except ClientError as exc:
            if if_match and _changed(exc):
                raise UploadChanged() from exc
            raise translate(exc, "reading an object") from exc
        except BotoCoreError as exc:
            raise translate(exc, "reading an object") from exc

    def reported_sha256(self, key: str, *, if_match: str | None = None) -> str | None:
        """The SHA-256 (hex) S3 keeps for the whole object (HeadObject, ChecksumMode ENABLED),
        or None: stored without x-amz-checksum-sha256 (a POST form), or only a checksum of
        part checksums (a multipart upload's ``<base64>-<parts>``). It proves the bytes only on
        a store that refuses a PUT whose header does not match them (AWS S3); moto and Ceph
        keep whatever the client sent."""
        kwargs: dict[str, Any] = {"ChecksumMode": "ENABLED"}
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key), **kwargs)
        except ClientError as exc:
            if if_match and _changed(exc):
                raise UploadChanged() from exc
            raise translate(exc, "looking up an object") from exc
        except BotoCoreError as exc:
            raise translate(exc, "looking up an object") from exc
        value = answer.get("ChecksumSHA256")
        if not isinstance(value, str) or answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        try:
            digest = base64.b64decode(value, validate=True)
        except binascii.Error:
            return None  # "<base64>-<parts>": composite, not the object's own SHA-256
        return digest.hex() if len(digest) == 32 else None

    def read_head(self, key: str, size: int, *, if_match: str | None = None) -> bytes:
        response = self._get(key, if_match, Range=f"bytes=0-{size - 1}")
        return bytes(response["Body"].read())

    def sha256(self, key: str, *, if_match: str | None = None) -> str:
        """Hash the object as S3 holds it (streamed; the gateway never holds it whole)."""
        digest = hashlib.sha256()
        response = self._get(key, if_match)
        try:
            for chunk in response["Body"].iter_chunks(1 << 20):
                digest.update(chunk)
        except FlexibleChecksumError:
            # The object carries a checksum its bytes do not match (a store that keeps what
            # the client sent, as moto and Ceph do). botocore checks it once the stream has
            # ended, so every byte went by: the digest is the bytes' own, for the caller to
            # compare with what was promised.
            log.warning("%s does not match the checksum S3 keeps for it", key)
        except (BotoCoreError, OSError) as exc:
            raise StorageError("Object store failed while reading an object.") from exc
        return digest.hexdigest()

    def copy(
        self,
        source: str,
        target: str,
        *,
        if_match: str,
        content_type: str,
        content_disposition: str,
        metadata: dict[str, str],
    ) -> None:
        """Server-side copy of exactly the version checked (CopySourceIfMatch), carrying only
        the headers and metadata given here: whatever the client sent with its PUT stays behind."""
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self.full_key(target),
                CopySource={"Bucket": self.bucket, "Key": self.full_key(source)},
                CopySourceIfMatch=if_match,
                MetadataDirective="REPLACE",
                TaggingDirective="REPLACE",
                ContentType=content_type,
                ContentDisposition=content_disposition,
                Metadata=metadata,
            )
        except ClientError as exc:
            if _changed(exc):
                raise UploadChanged() from exc
            raise translate(exc, "copying an object") from exc
        except BotoCoreError as exc:
            raise translate(exc, "copying an object") from exc

    def allow_browsers(self, origins: tuple[str, ...]) -> None:
        """Bucket CORS: pages on these origins may send the presigned requests themselves
        (and read the ETag of each part, which completing a multipart upload needs)."""
        rule = {
            "AllowedOrigins": list(origins),
            "AllowedMethods": ["GET", "PUT", "POST", "DELETE", "HEAD"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag", "x-amz-checksum-sha256"],
            "MaxAgeSeconds": 3600,
        }
        _call(
            "configuring the bucket's CORS",
            self.client.put_bucket_cors,
            Bucket=self.bucket,
            CORSConfiguration={"CORSRules": [rule]},
        )

    def notify(self, queue_arn: str) -> None:
        """S3 event notifications for single PUT/POST uploads landing on their staging keys
        (``<prefix>/....upload``) go to the queue: uploads whose client never calls
        ``complete`` are completed by the worker."""
        prefix = f"{self.store.prefix}/" if self.store.prefix else ""
        rules = [{"Name": "suffix", "Value": ".upload"}]
        if prefix:
            rules.insert(0, {"Name": "prefix", "Value": prefix})
        _call(
            "configuring notifications",
            self.client.put_bucket_notification_configuration,
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": rules}},
                    }
                ]
            },
        )

    def delete(self, key: str) -> None:
        self.store.delete(key)
