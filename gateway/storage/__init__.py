"""Object storage behind one small protocol, with S3 and a local directory as backends.

Contract shared by every backend: nothing written through a writer is visible under its key
until ``commit()``; ``abort()`` leaves nothing behind. A writer is never committed implicitly:
it has no finalizer and is not an ``io.IOBase`` (whose ``close()`` on garbage collection would
complete a partial multipart upload); only an explicit ``commit()`` makes an object visible.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


@dataclass(frozen=True)
class PendingUpload:
    """An upload begun but never committed nor aborted (e.g. its worker was killed)."""

    key: str
    upload_id: str
    started: datetime


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


class ObjectWriter(Protocol):
    key: str
    bytes_written: int

    def write(self, data: bytes) -> None:
        """Append bytes. May block while earlier parts are still being sent (backpressure)."""

    def spill(self) -> None:
        """Make everything written so far durable but still invisible, freeing the buffers.

        Only ``commit`` or ``abort`` may follow (S3 parts other than the last must be >= 5 MiB).
        """

    def commit(self, *, sha256: str) -> StoredObject:
        """Make the object visible under its key, recording its SHA-256 (hex).

        If it raises, the outcome is unknown (the request may have applied with its answer
        lost): the caller must delete the key to be sure nothing stays.
        """

    def abort(self) -> None:
        """Discard everything; idempotent, also after a failed commit."""


class ObjectStore(Protocol):
    def open_writer(self, key: str, *, content_type: str, metadata: dict[str, str],
                    content_disposition: str = "") -> ObjectWriter:
        """Start an object; metadata values must be ASCII (they travel as HTTP headers)."""

    def delete(self, key: str) -> None:
        """Remove the object; idempotent."""

    def exists(self, key: str) -> bool: ...

    def check(self) -> None:
        """Raise ``StorageError`` unless the store is reachable (readiness)."""

    def direct_url(self, key: str) -> str | None:
        """The store's own URL for the key, or None when the gateway itself serves it."""

    # Sweeper support.
    def pending_uploads(self) -> Iterator[PendingUpload]: ...

    def abort_pending(self, upload: PendingUpload) -> None: ...

    def objects(self) -> Iterator[ObjectInfo]: ...


@contextlib.contextmanager
def writer(store: ObjectStore, key: str, *, content_type: str, metadata: dict[str, str],
           sha256: str) -> Iterator[ObjectWriter]:
    """DESIGN's ``with`` form for a single object: commit on a clean exit, abort on any
    exception. The upload service drives writers explicitly, committing a request's objects
    together only after its closing boundary."""
    w = store.open_writer(key, content_type=content_type, metadata=metadata)
    try:
        yield w
    except BaseException:
        w.abort()
        raise
    w.commit(sha256=sha256)


def open_store(settings) -> ObjectStore:
    """The backend named by ``GATEWAY_STORAGE_URL``."""
    from urllib.parse import urlparse

    url = urlparse(settings.storage_url)
    if url.scheme == "s3":
        from .s3 import S3ObjectStore, make_s3_client

        return S3ObjectStore(make_s3_client(settings), bucket=url.netloc,
                             prefix=url.path.strip("/"), settings=settings)
    from .local import LocalObjectStore

    path = url.path if url.scheme == "file" else settings.storage_url
    return LocalObjectStore(path)
