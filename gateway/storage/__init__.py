"""Object storage: one small core protocol, optional capabilities beside it, two backends.

Contract shared by every backend: nothing written through a writer is visible under its key
until ``commit()``; ``abort()`` leaves nothing behind. A writer is never committed implicitly:
it has no finalizer and is not an ``io.IOBase`` (whose ``close()`` on garbage collection would
complete a partial multipart upload); only an explicit ``commit()`` makes an object visible.

Capabilities (as tusd composes optional store interfaces) are explicit in ``Storage``: a backend
that cannot do a thing simply has ``None`` there, and the features built on it are absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.storage.chunks import ChunkStore
    from gateway.storage.integrity import Probe
    from gateway.storage.presign import DirectStore
    from gateway.storage.staging import PartSpace


@dataclass(frozen=True)
class PartInfo:
    """A part of a multipart upload as the backend holds it."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectHead:
    size: int
    content_type: str
    etag: str  # as S3 sends it (quoted): for IfMatch / CopySourceIfMatch


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

    def write(self, data: bytes | memoryview) -> None:
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
    def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str = "",
    ) -> ObjectWriter:
        """Start an object; metadata values must be ASCII (they travel as HTTP headers)."""

    def delete(self, key: str) -> None:
        """Remove the object; idempotent."""

    def exists(self, key: str) -> bool: ...

    def read(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks (StorageError when it cannot be read)."""

    def check(self) -> None:
        """Raise ``StorageError`` unless the store is reachable (readiness)."""

    def full_key(self, key: str) -> str:
        """The object's own name in the backend (the S3 store adds its prefix)."""

    def direct_url(self, key: str) -> str | None:
        """The store's own URL for the key, or None when the gateway itself serves it."""


class ObjectListing(Protocol):
    """What the sweeper needs: unfinished uploads and every object, with their ages."""

    def pending_uploads(self) -> Iterator[PendingUpload]: ...

    def abort_pending(self, upload: PendingUpload) -> None: ...

    def objects(self) -> Iterator[ObjectInfo]: ...


class LocalFiles(Protocol):
    """A store whose objects are files the gateway can serve itself (the embedded mode)."""

    def path_of(self, key: str) -> Path: ...

    def is_servable(self, key: str) -> bool:
        """A committed object under a gateway-made key (never a temporary file)."""


class Quarantine(Protocol):
    """Where new objects wait for their virus scan, out of reach of every public URL."""

    @property
    def store(self) -> ObjectStore:
        """The quarantine's own location (an object store with listing)."""

    def release(self, key: str) -> None:
        """Move the object to the public store under the same key (idempotent: done when it
        is no longer in the quarantine but is public)."""

    def withhold(self, key: str) -> None:
        """Move the object from the public store back here (media that failed processing):
        idempotent, done when it is no longer public; an object in neither place is done too."""


@dataclass(frozen=True)
class Storage:
    objects: ObjectStore
    listing: ObjectListing
    provision: Callable[[], None] | None  # creates what the backend needs (the S3 bucket)
    direct: DirectStore | None  # presigned uploads straight to the backend (storage/presign.py)
    local: LocalFiles | None  # files the gateway serves at /media/
    quarantine: Quarantine | None = None  # when scanning is on: where uploads land first
    # Where the objects of media that failed processing are withheld (the quarantine's place,
    # GATEWAY_QUARANTINE_URL, also while scanning is off): out of reach of every public URL.
    holding: Quarantine | None = None
    chunks: ChunkStore | None = None  # resumable uploads' chunks and parts (in the landing store)
    # The memory budget of bodies in flight and where slow parts are staged (storage/staging.py).
    space: PartSpace | None = None
    # What the store verifies, its addressing, CORS and notifications (``flask check``; S3).
    probe: Callable[[], Probe] | None = None

    @property
    def landing(self) -> ObjectStore:
        """Where protocols write new objects: the quarantine while scanning is on."""
        return self.quarantine.store if self.quarantine is not None else self.objects


def open_storage(settings: Settings) -> Storage:
    """The backend named by ``GATEWAY_STORAGE_URL``, with the capabilities it has, and the
    place of ``GATEWAY_QUARANTINE_URL``: where failed media are withheld and, with scanning on
    (``GATEWAY_CLAMD_URL``), where uploads land first (the quarantine)."""
    url = urlparse(settings.storage_url)
    space = part_space(settings, staged=url.scheme == "s3")
    if url.scheme == "s3":
        from gateway.storage.s3 import S3ObjectStore, S3Quarantine, make_s3_client
        from gateway.storage.s3_direct import S3DirectUploads

        client = make_s3_client(settings)
        s3 = S3ObjectStore.from_settings(
            client, bucket=url.netloc, prefix=url.path.strip("/"), settings=settings, space=space
        )
        held = urlparse(settings.effective_quarantine_url)
        s3_holding = S3Quarantine(
            s3,
            S3ObjectStore.from_settings(
                client,
                bucket=held.netloc,
                prefix=held.path.strip("/"),
                settings=settings,
                space=space,
            ),
        )
        s3_quarantine = s3_holding if settings.clamd_url else None
        from gateway.storage.s3_check import probe
        from gateway.storage.s3_chunks import S3Chunks

        landing = s3_quarantine.store if s3_quarantine is not None else s3
        return Storage(
            objects=s3,
            listing=s3,
            provision=s3.create_bucket,
            direct=S3DirectUploads(landing),
            local=None,
            quarantine=s3_quarantine,
            holding=s3_holding,
            chunks=S3Chunks(landing),
            space=space,
            probe=lambda: probe(landing),
        )
    from gateway.storage.chunks import LocalChunks
    from gateway.storage.local import LocalObjectStore, LocalQuarantine

    local = LocalObjectStore(url.path if url.scheme == "file" else settings.storage_url)
    local_holding = LocalQuarantine(local, LocalObjectStore(settings.effective_quarantine_url))
    local_quarantine = local_holding if settings.clamd_url else None
    landing_dir = local_quarantine.store if local_quarantine is not None else local
    return Storage(
        objects=local,
        listing=local,
        provision=None,
        direct=None,
        local=local,
        quarantine=local_quarantine,
        holding=local_holding,
        chunks=LocalChunks(landing_dir),
        space=space,
    )


def part_space(settings: Settings, *, staged: bool) -> PartSpace:
    """The node's budgets (GATEWAY_MEMORY_BUDGET, GATEWAY_STAGING_MAX_BYTES), this worker
    process's share; staging only where parts are S3's (``staged``)."""
    from gateway.config import worker_processes
    from gateway.storage.staging import MemoryBudget, PartSpace, Staging

    workers = worker_processes()
    staging = (
        Staging(
            settings.staging_dir,
            settings.staging_max_bytes // workers,
            integrity=settings.effective_s3_integrity,
        )
        if staged and settings.stage_below_rate
        else None
    )
    return PartSpace(
        MemoryBudget(settings.memory_budget // workers),
        staging,
        fast_rate=settings.stage_below_rate,
    )
