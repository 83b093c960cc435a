"""The per-file ingest step every protocol shares: sniff -> allow-list -> writer -> SHA-256 ->
record draft. No Flask, no wire format: a protocol hands bytes (or, for direct uploads, the
first bytes of what the store holds) and gets checked content, an object and a record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from gateway import errors
from gateway.media.lifecycle import Status
from gateway.media.naming import content_disposition
from gateway.media.principal import Principal
from gateway.media.records import MediaRecord, Sha256State, UploadState
from gateway.storage import ObjectStore, ObjectWriter
from gateway.storage.keys import object_key
from gateway.uploads.sniff import (
    ANY_TYPE,
    SNIFF_BYTES,
    UNKNOWN,
    SniffedType,
    is_allowed,
    served_as,
    sniff,
)

if TYPE_CHECKING:
    from hashlib import _Hash


class BodyReader(Protocol):
    """A request body as a protocol reads it (the HTTP edge hands a guarded one)."""

    def read(self, size: int) -> bytes | bytearray:
        """Up to ``size`` bytes; empty at the end of the body."""


def checked_type(head: bytes, allowed_types: tuple[str, ...], *, name: str) -> SniffedType:
    """The type the first bytes say, if the allow-list admits it (else UnsupportedType); with
    ``*/*`` in the list, bytes of no known type are ``application/octet-stream``. A container
    whose first bytes cannot tell audio from video is admitted when either type is, as the
    one the list admits (the worker settles it)."""
    sniffed = sniff(head)
    if sniffed is None and ANY_TYPE in allowed_types:
        return UNKNOWN
    if (
        sniffed is not None
        and sniffed.alternative
        and not is_allowed(sniffed.mime, allowed_types)
        and is_allowed(sniffed.alternative, allowed_types)
    ):
        return sniffed.swapped()
    if sniffed is None or not is_allowed(sniffed.mime, allowed_types):
        what = sniffed.mime if sniffed else "unrecognized content"
        raise errors.UnsupportedType(
            f"File {name!r} is {what}; allowed: {', '.join(allowed_types)}."
        )
    return sniffed


def object_metadata(
    *, media_id: str, project_id: str, owner: str, original_name: str, sha256: str = ""
) -> dict[str, str]:
    """The metadata every object carries (ASCII: it travels as HTTP headers)."""
    metadata = {
        "media-id": media_id,
        "project-id": project_id,
        "owner": quote(owner, safe=""),
        "original-name": quote(original_name, safe=""),
    }
    if sha256:
        metadata["sha256"] = sha256
    return metadata


def record_metadata(record: MediaRecord, *, sha256: str = "") -> dict[str, str]:
    """``object_metadata`` of the object a record describes (a promised SHA-256, if any)."""
    return object_metadata(
        media_id=record.media_id,
        project_id=record.project_id,
        owner=record.owner,
        original_name=record.original_name,
        sha256=sha256,
    )


def served_headers(original_name: str, mime: str) -> dict[str, str]:
    """How an object of type ``mime`` is served (sniff.py ``served_as``): its Content-Type and
    Content-Disposition, as a writer's keyword arguments."""
    served = served_as(mime)
    return {
        "content_type": served.content_type,
        "content_disposition": content_disposition(original_name, inline=served.inline),
    }


def with_type(record: MediaRecord, sniffed: SniffedType) -> MediaRecord:
    """A record drafted before its bytes came (tus), once its first bytes say its type: that
    type, and the key it gives."""
    key = object_key(
        tenant=record.tenant,
        project_id=record.project_id,
        media_id=record.media_id,
        extension=sniffed.extension,
    )
    return record.evolve(mime_type=sniffed.mime, file_type=sniffed.file_type, s3_key=key)


@dataclass(frozen=True)
class Destination:
    """Who uploads, into which project: everything a key and a record need besides the file."""

    principal: Principal
    project_id: str
    quarantined: bool = False  # the bytes land in the quarantine (scanning is on)

    def key(self, media_id: str, sniffed: SniffedType) -> str:
        return object_key(
            tenant=self.principal.tenant,
            project_id=self.project_id,
            media_id=media_id,
            extension=sniffed.extension,
        )

    def draft(
        self,
        *,
        media_id: str,
        original_name: str,
        sniffed: SniffedType,
        size: int,
        sha256: str,
        created_at: str,
        metadata: dict[str, str],
        status: Status = Status.STORED,
        upload: UploadState | None = None,
        sha256_state: Sha256State = Sha256State.RECEIVED,
    ) -> MediaRecord:
        return MediaRecord(
            media_id=media_id,
            project_id=self.project_id,
            tenant=self.principal.tenant,
            owner=self.principal.subject,
            original_name=original_name,
            file_type=sniffed.file_type,
            mime_type=sniffed.mime,
            s3_key=self.key(media_id, sniffed),
            size=size,
            sha256=sha256,
            sha256_state=sha256_state,
            created_at=created_at,
            metadata=dict(metadata),
            status=status,
            upload=upload,
            quarantined=self.quarantined,
        )


@dataclass
class IncomingFile:
    """One file whose bytes stream through the gateway.

    The first ``SNIFF_BYTES`` are held until the type is known, so a refused type never opens a
    writer (no S3 call); after that every byte is hashed and written as it arrives.
    """

    store: ObjectStore
    destination: Destination
    allowed_types: tuple[str, ...]
    media_id: str
    original_name: str
    expected_sha256: str | None = None
    also_allowed: tuple[str, ...] | None = None  # a second allow-list (an upload ticket's)
    size: int = 0
    writer: ObjectWriter | None = None
    sniffed: SniffedType | None = None
    commit_started: bool = False
    _head: bytearray = field(default_factory=bytearray)
    _hasher: _Hash = field(default_factory=hashlib.sha256)

    @property
    def key(self) -> str:
        assert self.sniffed is not None
        return self.destination.key(self.media_id, self.sniffed)

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._hasher.update(data)
        writer = self.writer
        if writer is None:
            if self._head or len(data) < SNIFF_BYTES:  # only a short first read is held
                self._head += data
                if len(self._head) < SNIFF_BYTES:
                    return
                data, self._head = memoryview(self._head), bytearray()
            writer = self._open(bytes(data[:SNIFF_BYTES]))
        writer.write(data)

    def finish(self, *, more_follow: bool) -> None:
        """The last byte arrived: refuse an empty file or a wrong checksum, free the buffers
        when more files follow in the same request."""
        if self.size == 0:
            raise errors.EmptyFile()
        if self.writer is None:
            head, self._head = self._head, bytearray()
            self._open(bytes(head)).write(memoryview(head))
        assert self.writer is not None
        if self.expected_sha256 is not None and self.expected_sha256 != self.sha256:
            raise errors.ChecksumMismatch()
        if more_follow:
            self.writer.spill()

    def _open(self, head: bytes) -> ObjectWriter:
        """Sniff the file's first bytes and open its writer (nothing written yet)."""
        self.sniffed = checked_type(head, self.allowed_types, name=self.original_name)
        if self.also_allowed is not None:
            checked_type(head, self.also_allowed, name=self.original_name)
        metadata = object_metadata(
            media_id=self.media_id,
            project_id=self.destination.project_id,
            owner=self.destination.principal.subject,
            original_name=self.original_name,
            sha256=self.expected_sha256 or "",
        )
        self.writer = self.store.open_writer(
            self.key, metadata=metadata, **served_headers(self.original_name, self.sniffed.mime)
        )
        return self.writer

    def commit(self) -> None:
        assert self.writer is not None
        self.commit_started = True
        self.writer.commit(sha256=self.sha256)

    def abort(self) -> None:
        """Discard what was written; a no-op once committed."""
        if self.writer is not None:
            self.writer.abort()

    def draft(self, *, created_at: str, metadata: dict[str, str]) -> MediaRecord:
        assert self.sniffed is not None
        return self.destination.draft(
            media_id=self.media_id,
            original_name=self.original_name,
            sniffed=self.sniffed,
            size=self.size,
            sha256=self.sha256,
            created_at=created_at,
            metadata=metadata,
        )
