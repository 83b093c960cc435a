"""tus parts and chunks on S3 (see ``chunks``): the upload is an S3 multipart upload to its final
key; bytes past the last whole part wait in one small object until the next chunk completes a
part. Its own module so that the embedded mode never imports boto3.

Every body written here carries the integrity mode's checksums and its ETag is checked
(gateway/storage/integrity.py), as the form writer's: through the client (botocore adds its own
CRC32 as well), since a tus request writes at most a few parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gateway.storage import PartInfo
from gateway.storage.integrity import Sums, etag_holds, sums
from gateway.storage.s3 import S3ObjectStore, _call, require_etag
from gateway.storage.s3_direct import S3DirectUploads


class S3Chunks:
    def __init__(self, store: S3ObjectStore) -> None:
        self.store = store
        self.multipart = S3DirectUploads(store)  # the same multipart calls as direct uploads
        self.client = store.client
        self.bucket = store.bucket

    def _key(self, key: str) -> str:
        return self.store.full_key(key)

    def _sums(self, data: bytes | bytearray) -> tuple[Sums, dict[str, Any]]:
        """The checksums for ``data`` and the client's parameters that carry them."""
        sent = sums(data, self.store.integrity, with_crc32c=False)
        return sent, ({"ContentMD5": sent.headers["Content-MD5"]} if sent.md5 else {})

    def _put(self, action: str, key: str, data: bytes | bytearray, **params: Any) -> None:
        sent, checksum = self._sums(data)
        answer = _call(
            action,
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            **checksum,
            **params,
        )
        if not etag_holds(str(answer.get("ETag", "")), sent):
            self.store.discard_corrupt(self._key(key))
            require_etag(str(answer.get("ETag", "")), sent, action)

    def put(self, key: str, data: bytes | bytearray) -> None:
        self._put("storing a chunk", key, data)

    def get(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def read(self, key: str) -> Iterator[bytes]:
        return self.store.read(key)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def start(
        self, key: str, *, content_type: str, metadata: dict[str, str], content_disposition: str
    ) -> str:
        return self.multipart.start_multipart(
            key,
            content_type=content_type,
            content_disposition=content_disposition,
            metadata=metadata,
        )

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        sent, checksum = self._sums(data)
        answer = _call(
            "uploading a part",
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **checksum,
        )
        require_etag(str(answer["ETag"]), sent, "uploading a part")
        return str(answer["ETag"])

    def copy_part(self, key: str, upload_id: str, number: int, source: str) -> str:
        answer = _call(
            "copying a part",
            self.client.upload_part_copy,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": self._key(source)},
        )
        return str(answer["CopyPartResult"]["ETag"])

    def complete(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None:
        self.multipart.complete_multipart(
            key, upload_id, [PartInfo(n, 0, etag.strip('"')) for n, etag in parts]
        )

    def abort(self, key: str, upload_id: str) -> None:
        self.multipart.abort_multipart(key, upload_id)

    def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str,
    ) -> None:
        self._put(
            "storing the object",
            key,
            data,
            ContentType=content_type,
            ContentDisposition=content_disposition,
            Metadata=metadata,
        )
