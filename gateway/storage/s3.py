"""S3 (or any S3-compatible endpoint) as the object store, on boto3's multipart API.

Why not smart_open's writer (measured: docs/benchmarks.md, bench/writers.py): it sends one part at a
time from the caller's thread, so the client's bytes stop flowing while each part uploads; it
makes three requests for a 1 KiB file; and a plain ``close()`` after an error completes the
partial object. This writer keeps ``parts_in_flight`` parts uploading on a shared thread pool
while the caller keeps reading, sends a file smaller than one part as a single PutObject, and
only ever completes in ``commit()``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import StorageCorrupted, StorageError, StorageUnavailable
from gateway.metrics import instrument_s3_client
from gateway.storage import ObjectInfo, PendingUpload, StoredObject
from gateway.storage.integrity import DIGEST_ERRORS, Sums, etag_holds, sums
from gateway.storage.s3_requests import S3Requests
from gateway.storage.staging import Body, FileBody, Part, PartFiller, PartSpace, unlimited

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)
READ_CHUNK = 1024 * 1024
T = TypeVar("T")

# Error codes that mean "slow down / try later" (answered 503 with Retry-After) once
# botocore's own retries are spent; any other failure of the store answers 502.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "503",
    }
)


def make_s3_client(settings: Settings) -> Any:
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",  # presigned URLs too (SigV2 signs no Content-Length)
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=settings.s3_max_pool_connections,
        # Bodies carry checksums (computed here, gateway/storage/integrity.py) that S3 verifies or
        # the gateway checks, so the payload need not be SHA-256 signed as well (boto3 skips it
        # on https; this makes plain http match).
        s3={
            "payload_signing_enabled": False,
            "addressing_style": "path" if settings.s3_endpoint_url else "auto",
        },
        # botocore (>= 1.36) would add a checksum of its own to every streamed body, over TLS as
        # an aws-chunked trailer, which S3-compatible stores such as Ceph RGW refuse (411). The
        # checksums the gateway means to send it sends itself, as headers (s3_requests.py).
        request_checksum_calculation="when_required",
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, config=config
    )
    instrument_s3_client(client)
    return client


def translate(exc: Exception, action: str) -> StorageError:
    """Turn a botocore failure into the gateway's StorageError (503 when worth retrying)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in DIGEST_ERRORS:
            return StorageCorrupted(
                f"The object store refused a body as not matching its checksum while {action}"
                " (changed on the way); nothing was kept. Retry the upload."
            )
        if code in RETRYABLE_CODES or status == 503:
            return StorageUnavailable(f"Object store unavailable while {action}: {code or status}.")
        return StorageError(f"Object store error while {action}: {code or status}.")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"Object store unreachable while {action}.")
    raise TypeError(f"not a botocore error: {exc!r}")


def _call(action: str, fn: Callable[..., T], **kwargs: Any) -> T:
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, action) from exc


def require_etag(etag: str, sent: Sums, action: str) -> None:
    """StorageCorrupted unless the store's ETag is the MD5 of what was sent (md5 mode)."""
    if not etag_holds(etag, sent):
        log.error("ETag %s is not the MD5 %s sent while %s", etag, sent.md5, action)
        raise StorageCorrupted(
            f"The object store holds other bytes than were sent while {action}"
            " (changed on the way); nothing was kept. Retry the upload."
        )


class S3ObjectWriter:
    def __init__(
        self,
        store: S3ObjectStore,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str,
    ) -> None:
        self.key = key
        self._object_key = store.full_key(key)
        self._headers = {"ContentType": content_type, "Metadata": metadata}
        if content_disposition:
            self._headers["ContentDisposition"] = content_disposition
        self.bytes_written = 0
        self._store = store
        self._client = store.client
        self._metadata = metadata
        # The part being filled: in a part buffer or staged on disk (gateway/storage/staging.py).
        self._filler = PartFiller(store.space, store.buffers)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight: deque[tuple[Future[None], Part]] = deque()
        self._closed = False

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        self.bytes_written += len(data)
        for part in self._filler.write(data):
            self._send_part(part)

    def spill(self) -> None:
        tail = self._filler.take()
        if tail is not None:
            self._send_part(tail)
        self._drain(0)

    def _send_part(self, data: Part) -> None:
        try:
            if self._upload_id is None:
                self._upload_id = self._client_call(
                    "starting a multipart upload",
                    self._client.create_multipart_upload,
                    Bucket=self._store.bucket,
                    Key=self._object_key,
                    ChecksumAlgorithm="CRC32C",
                    **self._headers,
                )["UploadId"]
            self._drain(self._store.parts_in_flight - 1)
        except BaseException:
            data.release()
            raise
        number = len(self._parts) + 1
        part: dict[str, Any] = {"PartNumber": number}
        self._parts.append(part)
        future = self._store.executor.submit(self._upload_part, part, data)
        self._in_flight.append((future, data))

    def _upload_part(self, part: dict[str, Any], data: Part) -> None:
        # The checksums are sent as headers: left to botocore, an https request would carry
        # them as a trailer, for which botocore copies the body into a BytesIO. CRC32C: the
        # CPU's own instruction (0.05 CPU s/GiB here; zlib's CRC32 0.32). A part in memory's
        # are computed here, on the part's thread; a staged part's as its bytes arrived.
        assert self._upload_id is not None
        try:
            sent = data.sums(self._store.integrity)
            etag = _call(
                "uploading a part",
                self._store.requests.upload_part,
                key=self._object_key,
                upload_id=self._upload_id,
                number=part["PartNumber"],
                body=data.body(),
                headers=sent.headers,
            )
        finally:
            data.release()
        require_etag(etag, sent, "uploading a part")
        part["ETag"] = etag
        part["ChecksumCRC32C"] = sent.crc32c

    def _client_call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        with self._store.client_slots:
            return _call(action, fn, **kwargs)

    def _drain(self, keep: int) -> None:
        """Wait until at most ``keep`` parts are in flight; re-raise the first failure."""
        while len(self._in_flight) > keep:
            self._in_flight.popleft()[0].result()

    # -- ending ----------------------------------------------------------------------------
    def commit(self, *, sha256: str) -> StoredObject:
        if self._closed:
            raise StorageError("The writer is already closed.")
        try:
            if self._upload_id is None:
                self._put_whole(sha256)
            else:
                self._complete(sha256)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return StoredObject(self.key, self.bytes_written)

    def _put_whole(self, sha256: str) -> None:
        headers: dict[str, str] = {
            "Content-Type": str(self._headers["ContentType"]),
            "x-amz-checksum-sha256": base64.b64encode(binascii.unhexlify(sha256)).decode(),
        }
        if "ContentDisposition" in self._headers:
            headers["Content-Disposition"] = str(self._headers["ContentDisposition"])
        for name, value in {**self._metadata, "sha256": sha256}.items():
            headers[f"x-amz-meta-{name}"] = value
        tail = self._filler.take()
        try:
            sent = tail.sums(self._store.integrity, with_crc32c=False) if tail is not None else None
            body = tail.body() if tail is not None else b""
            if tail is not None and isinstance(body, bytes):
                # A copy: the part buffer (a whole part, for a file of any size) goes back at
                # once. Sent from the buffer itself, 64 concurrent 1 MiB uploads held 64 of
                # them, 6.9 MiB of RSS per upload in flight instead of 1.3, and more CPU
                # (bench (c)).
                tail.release()
            self._store.put_checked(self._object_key, body, headers, with_crc32c=False, sent=sent)
        finally:
            if tail is not None:
                tail.release()

    def _complete(self, sha256: str) -> None:
        tail = self._filler.take()
        if tail is not None:
            self._send_part(tail)
        self._drain(0)
        self._client_call(
            "completing the multipart upload",
            self._client.complete_multipart_upload,
            Bucket=self._store.bucket,
            Key=self._object_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None  # completed: nothing left to abort
        if self._metadata.get("sha256") != sha256:
            # Metadata is fixed when a multipart upload starts, before the hash is known;
            # a tag carries it instead.
            self._client_call(
                "tagging the object",
                self._client.put_object_tagging,
                Bucket=self._store.bucket,
                Key=self._object_key,
                Tagging={"TagSet": [{"Key": "sha256", "Value": sha256}]},
            )

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._filler.discard()
        for future, _ in self._in_flight:
            future.cancel()
        for future, data in self._in_flight:
            if not future.cancelled():
                future.exception()  # wait; its error no longer matters
            data.release()  # a cancelled part's never ran
        self._in_flight.clear()
        if self._upload_id is not None:
            try:
                with self._store.client_slots:
                    self._client.abort_multipart_upload(
                        Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id
                    )
            except (ClientError, BotoCoreError):
                log.warning(
                    "abort of multipart upload %s for %s failed; the sweeper will abort it",
                    self._upload_id,
                    self.key,
                    exc_info=True,
                )


class S3ObjectStore:
    """Every value comes from the caller (``from_settings``): one default per setting, in config."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str,
        part_size: int,
        parts_in_flight: int,
        endpoint_url: str,
        region: str,
        executor: ThreadPoolExecutor,
        requests: S3Requests,
        space: PartSpace | None = None,
        integrity: str,
        client_slots: int | None = None,
    ) -> None:
        self.client = client
        # The writers' calls through the client (start, complete, tag, abort a multipart
        # upload) wait for one of ``client_slots`` (its connection pool's size) rather than
        # open connections past the pool: 1,000 uploads starting their multipart uploads at
        # once opened ~900 connections beyond it, which a store's listen queue dropped
        # (connect timeouts on every attempt: 61 of 1,000 answered 502 on moto).
        self.client_slots: contextlib.AbstractContextManager[Any] = (
            threading.BoundedSemaphore(client_slots) if client_slots else contextlib.nullcontext()
        )
        self.integrity = integrity  # GATEWAY_S3_INTEGRITY (gateway/storage/integrity.py)
        self.requests = requests  # PutObject and UploadPart, without the client's pipeline
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.endpoint_url = endpoint_url
        self.region = region
        self.executor = executor
        # Where parts fill: memory within the budget, slow ones staged (gateway/storage/staging.py).
        self.space = space or PartSpace(unlimited(), None, fast_rate=0)
        self.buffers = self.space.buffers(self.part_size, keep=4 * (self.parts_in_flight + 1))

    @classmethod
    def from_settings(
        cls,
        client: Any,
        *,
        bucket: str,
        prefix: str,
        settings: Settings,
        space: PartSpace | None = None,
    ) -> S3ObjectStore:
        return cls(
            client,
            bucket=bucket,
            prefix=prefix,
            part_size=settings.effective_part_size,
            parts_in_flight=settings.s3_parts_in_flight,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            executor=ThreadPoolExecutor(
                settings.s3_max_pool_connections, thread_name_prefix="s3-part"
            ),
            requests=S3Requests(
                client,
                bucket=bucket,
                max_attempts=settings.s3_max_attempts,
                connect_timeout=settings.s3_connect_timeout,
                read_timeout=settings.s3_read_timeout,
                max_pool_connections=settings.s3_max_pool_connections,
            ),
            space=space,
            integrity=settings.effective_s3_integrity,
            client_slots=settings.s3_max_pool_connections,
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_checked(
        self,
        full_key: str,
        body: Body,
        headers: dict[str, str],
        *,
        with_crc32c: bool = True,
        sent: Sums | None = None,
    ) -> None:
        """PutObject with the integrity mode's checksums (``sent``: computed already, as a
        staged file's are; else of ``body``, in memory); an object whose ETag says the store
        holds other bytes is deleted (best effort: a caller that may have committed it deletes
        or journals it too) and StorageCorrupted raised."""
        if sent is None:
            if isinstance(body, FileBody):
                raise TypeError("a staged body's checksums come with it")
            sent = sums(body, self.integrity, with_crc32c=with_crc32c)
        etag = _call(
            "storing the object",
            self.requests.put_object,
            key=full_key,
            body=body,
            headers={**headers, **sent.headers},
        )
        if not etag_holds(etag, sent):
            self.discard_corrupt(full_key)
            require_etag(etag, sent, "storing the object")

    def discard_corrupt(self, full_key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
        except (ClientError, BotoCoreError):
            log.warning("could not delete %s, stored with other bytes than sent", full_key)

    def _store_key(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str = "",
    ) -> S3ObjectWriter:
        return S3ObjectWriter(
            self,
            key,
            content_type=content_type,
            metadata=metadata,
            content_disposition=content_disposition,
        )

    def delete(self, key: str) -> None:
        _call(
            "deleting an object",
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self.full_key(key),
        )

    def head(self, key: str) -> dict[str, Any] | None:
        """S3's HeadObject answer for the key, or None when there is no such object."""
        try:
            answer: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.full_key(key)
            )
            return answer
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, "looking up an object") from exc
        except BotoCoreError as exc:
            raise translate(exc, "looking up an object") from exc

    def read(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
            yield from body.iter_chunks(READ_CHUNK)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "reading an object") from exc
        except OSError as exc:
            raise StorageError("Object store failed while reading an object.") from exc

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def check(self) -> None:
        _call("checking the bucket", self.client.head_bucket, Bucket=self.bucket)

    def direct_url(self, key: str) -> str:
        full = self.full_key(key)
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{full}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{full}"

    def _listing(self, operation: str, items: str, action: str) -> Iterator[dict[str, Any]]:
        """Every item of a paginated listing under the store's prefix."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.prefix:
            kwargs["Prefix"] = self.prefix + "/"
        try:
            for page in self.client.get_paginator(operation).paginate(**kwargs):
                yield from page.get(items, [])
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, action) from exc

    def pending_uploads(self) -> Iterator[PendingUpload]:
        for upload in self._listing("list_multipart_uploads", "Uploads", "listing uploads"):
            yield PendingUpload(
                key=self._store_key(upload["Key"]),
                upload_id=upload["UploadId"],
                started=upload["Initiated"],
            )

    def abort_pending(self, upload: PendingUpload) -> None:
        _call(
            "aborting a multipart upload",
            self.client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=self.full_key(upload.key),
            UploadId=upload.upload_id,
        )

    def objects(self) -> Iterator[ObjectInfo]:
        for item in self._listing("list_objects_v2", "Contents", "listing objects"):
            yield ObjectInfo(
                key=self._store_key(item["Key"]), size=item["Size"], modified=item["LastModified"]
            )

    def create_bucket(self) -> None:
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise translate(exc, "creating the bucket") from exc


class S3Quarantine:
    """A second prefix of the bucket, outside the storage prefix that the CDN serves (its
    origin path); releasing and withholding are a server-side copy (multipart past 5 GB, by
    boto3's managed copy) and a delete."""

    def __init__(self, public: S3ObjectStore, quarantine: S3ObjectStore) -> None:
        self.public = public
        self.store = quarantine

    def release(self, key: str) -> None:
        if self.store.head(key) is None:
            if self.public.head(key) is None:
                raise StorageError("The quarantined object is gone.")
            return  # released already (a redelivered job)
        _move(self.store, self.public, key, "releasing an object from the quarantine")

    def withhold(self, key: str) -> None:
        if self.public.head(key) is None:
            return  # withheld already (a redelivered job), or gone: nothing is served
        _move(self.public, self.store, key, "withholding an object in the quarantine")


def _move(source: S3ObjectStore, target: S3ObjectStore, key: str, action: str) -> None:
    try:
        target.client.copy(
            {"Bucket": source.bucket, "Key": source.full_key(key)},
            target.bucket,
            target.full_key(key),
            ExtraArgs={"MetadataDirective": "COPY"},
        )
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, action) from exc
    source.delete(key)
