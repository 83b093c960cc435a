"""Resumable uploads over tus 1.0 (tus.io): the protocol's state machine, Flask-free.

Extensions: creation, creation-with-upload, creation-defer-length, termination, checksum (md5,
sha1, sha256), expiration, concatenation. The same rules as every other path: the caller's JWT,
``projectId`` (in Upload-Metadata) checked before anything is created, the size limit, content
sniffed from the first bytes against the allow-list (415: the upload is terminated), server-made
keys, a ``pending`` media record from creation that becomes ``stored`` on the last byte and goes
through the processing pipeline.

State lives in the record store and the object store only, so any gateway node can take the
next request: the bytes go through an upload-shaped store (gateway/storage/resumable.py: the
parts, the tail past them, the join), and a request that writes first takes the upload with a
lease (gateway/uploads/tus_lease.py): a second request at the same time gets 423, and the record
only ever moves by a compare-and-set, so two nodes cannot corrupt an upload.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway import errors
from gateway.media.events import Announcer
from gateway.media.lifecycle import Status, is_visible
from gateway.media.naming import check_project_id, display_name, new_media_id
from gateway.media.principal import Principal
from gateway.media.records import (
    IdempotentAnswer,
    MediaRecord,
    MediaStore,
    Sha256State,
    TusUpload,
    tus_state,
)
from gateway.storage.resumable import ResumableUploads, ResumableWriter, Target, part_size_for
from gateway.uploads.hashstate import hasher_at, saved_state
from gateway.uploads.ingest import (
    BodyReader,
    Destination,
    checked_type,
    record_metadata,
    served_headers,
    with_type,
)
from gateway.uploads.pending import PendingUploads
from gateway.uploads.sniff import SNIFF_BYTES, UNTYPED
from gateway.uploads.tus_lease import Lease, held

log = logging.getLogger(__name__)
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}
RESERVED_METADATA = {"projectId", "filename", "name", "filetype", "type"}


@dataclass(frozen=True)
class TusOptions:
    """The settings tus reads (built once by gateway/services.py)."""

    max_bytes: int  # the largest upload (Tus-Max-Size)
    expiry_seconds: int  # an unfinished upload ends this long after its creation
    lock_seconds: int  # a PATCH's lease (gateway/uploads/tus_lease.py)
    max_checksum_chunk: int  # a checksummed chunk is held until verified: at most this
    min_part_size: int  # larger where an upload needs it (resumable.py ``part_size_for``)
    max_pending: int  # pending uploads per caller, all protocols together
    allowed_types: tuple[str, ...]
    max_filename_chars: int
    read_size: int  # bytes per read of a PATCH's body


@dataclass(frozen=True)
class CreateUpload:
    """A creation request (parsed from its headers by gateway/http/api/tus_requests.py)."""

    metadata: tuple[tuple[str, str], ...]  # Upload-Metadata, in order
    length: int | None  # None: deferred (creation-defer-length), or a final upload
    concat: Literal["", "partial", "final"] = ""
    partials: tuple[str, ...] = ()  # a final upload's partial uploads (their ids), in order


@dataclass(frozen=True)
class PatchChunk:
    """A PATCH (parsed from its headers by gateway/http/api/tus_requests.py)."""

    offset: int
    length: int | None = None  # Upload-Length, declared with this request
    checksum: tuple[str, bytes] | None = None  # (algorithm, digest) of this request's body
    content_length: int | None = None


class TusService:
    def __init__(
        self,
        options: TusOptions,
        uploads: ResumableUploads,
        records: MediaStore,
        announcer: Announcer,
        *,
        quarantined: bool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.options = options
        self.uploads = uploads
        self.records = records
        self.announcer = announcer
        self.quarantined = quarantined
        self.clock = clock

    @property
    def pending(self) -> PendingUploads:
        """The pending-upload lifecycle, on the service's current records, events and clock."""
        return PendingUploads(self.records, self.announcer, self.options.max_pending, self.clock)

    @property
    def max_size(self) -> int:
        return self.options.max_bytes

    def part_size_for(self, size: int) -> int:
        return part_size_for(size, at_least=self.options.min_part_size)

    def now(self) -> float:
        """Epoch seconds, the leases' clock."""
        return self.clock().timestamp()

    # -- creation ------------------------------------------------------------------------------
    def create(
        self,
        principal: Principal,
        request: CreateUpload,
        *,
        answer: Callable[[MediaRecord], IdempotentAnswer] | None = None,
    ) -> MediaRecord:
        """A new upload; ``answer`` (an Idempotency-Key's first answer) is saved with its
        record, in one write."""
        pairs = list(request.metadata)
        values = dict(pairs)
        project_id = values.get("projectId")
        if project_id is None:
            raise errors.MissingProjectId("projectId is required in Upload-Metadata.")
        principal.check_project(check_project_id(project_id))
        kind, upload_length = request.concat, request.length
        if upload_length is not None:
            self._check_length(upload_length)
        self.pending.check_room(principal)
        partials = [self._partial(principal, media_id) for media_id in request.partials]
        now = self.clock()
        media_id = new_media_id()
        upload = TusUpload(
            expires_at=(now + timedelta(seconds=self.options.expiry_seconds)).isoformat(
                timespec="seconds"
            ),
            length=upload_length,
            part_size=self.part_size_for(upload_length or self.max_size),
            concat=kind,
            partials=tuple(p.media_id for p in partials),
            client_metadata=tuple(pairs),
        )
        destination = Destination(principal, project_id, quarantined=self.quarantined)
        record = destination.draft(
            media_id=media_id,
            original_name=display_name(
                values.get("filename") or values.get("name") or "",
                max_chars=self.options.max_filename_chars,
            ),
            sniffed=UNTYPED,  # the type (and the key's extension) comes with the first bytes
            size=upload_length or 0,
            sha256="",
            sha256_state=Sha256State.PENDING,
            created_at=now.isoformat(timespec="microseconds"),
            metadata={k[:64]: v for k, v in pairs if k not in RESERVED_METADATA},
            status=Status.PENDING,
            upload=upload,
        )
        saved_answer = answer(record) if answer else None
        if kind == "final":
            return self._concatenate(record, partials, saved_answer)
        self.records.create_many([record], answer=saved_answer)
        return record

    def _check_length(self, length: int) -> None:
        if length > self.max_size:
            raise errors.TooLarge(f"Upload-Length {length} is over the limit of {self.max_size}.")
        if length == 0:
            raise errors.EmptyFile()

    def _partial(self, principal: Principal, media_id: str) -> MediaRecord:
        record = self.get(principal, media_id)
        upload = tus_state(record)
        if upload.concat != "partial" or upload.length is None or upload.offset != upload.length:
            raise errors.InvalidTusHeader("Every partial upload must be a finished partial upload.")
        return record

    # -- reading -------------------------------------------------------------------------------
    def get(self, principal: Principal, upload_id: str) -> MediaRecord:
        """A tus upload the caller may act on (others' are 404)."""
        return self.pending.get_owned(principal, upload_id, TusUpload)

    def live(self, principal: Principal, upload_id: str) -> MediaRecord:
        """The upload, unless it has ended: expired (410) or terminated (404)."""
        record = self.get(principal, upload_id)
        if record.status is Status.EXPIRED:
            raise errors.UploadGone()
        if record.status in (Status.ABORTED, Status.REJECTED):
            raise errors.UploadNotFound()
        if record.status is Status.PENDING and self.pending.is_overdue(record):
            self.pending.expire(record, self)
            raise errors.UploadGone()
        return record

    # -- PATCH ---------------------------------------------------------------------------------
    def patch(
        self, principal: Principal, upload_id: str, body: BodyReader, request: PatchChunk
    ) -> MediaRecord:
        record = self.live(principal, upload_id)
        upload = tus_state(record)
        at = request.offset
        if upload.concat == "final":
            raise errors.UploadFinal()
        if record.status is not Status.PENDING:
            if at == upload.offset and not request.content_length:
                return record  # a finished upload asked to go on with nothing: done already
            raise errors.UploadOffsetMismatch(f"The upload is complete at {upload.offset}.")
        if at != upload.offset:
            raise errors.UploadOffsetMismatch(
                f"Upload-Offset {at} is not the upload's offset, {upload.offset}."
            )
        declared = request.length
        if declared is not None:
            if upload.length is not None and declared != upload.length:
                raise errors.InvalidTusHeader("Upload-Length cannot change.")
            if declared < upload.offset:
                raise errors.InvalidTusHeader("Upload-Length is below the offset.")
            self._check_length(declared)
        expected = request.checksum
        if expected is not None and (request.content_length or 0) > self.options.max_checksum_chunk:
            raise errors.TooLarge(
                f"A checksummed chunk may be at most {self.options.max_checksum_chunk} bytes."
            )
        lease = Lease.take(self.records, record, seconds=self.options.lock_seconds, clock=self.now)
        writer = _Writer(self, lease, declared, expected)
        try:
            lease.start()
            return writer.run(body, request.content_length)
        finally:
            writer.cleanup()
            lease.stop()

    # -- termination and expiry ---------------------------------------------------------------
    def terminate(self, principal: Principal, upload_id: str) -> None:
        record = self.get(principal, upload_id)
        if record.status is not Status.PENDING:
            if is_visible(record.status):
                raise errors.UploadStored("A finished upload is deleted through /api/media.")
            return  # ended already
        if held(tus_state(record), self.now()):
            raise errors.UploadLocked()
        self.pending.end(record, Status.ABORTED, "Terminated by the client.", self)

    def remove_parts(self, record: MediaRecord) -> None:
        """Everything an unfinished upload holds: its multipart upload, tail and partial object
        (the ``PartsRemover`` of tus uploads)."""
        self.uploads.terminate(
            record.media_id, self.object_key_of(record), tus_state(record).stored
        )

    # -- finishing ------------------------------------------------------------------------------
    def finished(self, record: MediaRecord) -> None:
        if tus_state(record).concat != "partial":
            self.pending.announce_stored([record])

    def _concatenate(
        self, final: MediaRecord, partials: list[MediaRecord], answer: IdempotentAnswer | None
    ) -> MediaRecord:
        """A final upload: the partial uploads' bytes, in order, as one object (S3: part copies
        when every partial but the last is a valid S3 part, else re-chunked through memory).
        Its record is written stored, and the partials' records deleted, in one write: what the
        project holds does not change (no quota refuses it), and a final that fails for any
        reason leaves nothing (the partials stay, for another try)."""
        total = sum(tus_state(p).length or 0 for p in partials)
        self._check_length(total)
        if any(p.project_id != final.project_id for p in partials):
            raise errors.InvalidTusHeader("The partial uploads must be in the final's project.")
        first = self.uploads.partial_head(partials[0].media_id, SNIFF_BYTES)
        sniffed = checked_type(first, self.options.allowed_types, name=final.original_name)
        record = with_type(final, sniffed)
        upload = tus_state(record)
        joined = self.uploads.concatenate(
            self.target_of(record),
            [(p.media_id, tus_state(p).length or 0) for p in partials],
            upload.part_size,
        )
        stored = record.evolve(
            status=Status.STORED,
            size=total,
            upload=upload.holding(joined, length=total, offset=total),
        )
        try:
            self.records.create_many([stored], answer=answer, replacing=partials)
        except BaseException:
            self.uploads.delete_object(record.s3_key)
            raise
        self.uploads.remove_partials([p.media_id for p in partials])
        self.finished(stored)
        return stored

    def object_key_of(self, record: MediaRecord) -> str:
        """Where the upload's object is assembled: a partial upload's bytes wait in the store
        for its final upload; every other upload is the media object itself."""
        if tus_state(record).concat == "partial":
            return self.uploads.partial_key(record.media_id)
        return record.s3_key

    def target_of(self, record: MediaRecord) -> Target:
        """Where the upload's bytes go, served as its type says (a partial upload, with no type
        of its own, as a download of bytes)."""
        return Target(
            key=self.object_key_of(record),
            metadata=record_metadata(record),
            **served_headers(record.original_name, record.mime_type),
        )


class _Writer:
    """One PATCH: from the leased record to the next committed state (or nothing). The bytes go
    to the resumable store's writer, every storage write under the lease (``lease.check``)."""

    def __init__(
        self,
        service: TusService,
        lease: Lease,
        declared: int | None,
        expected: tuple[str, bytes] | None,
    ) -> None:
        self.service = service
        self.options = service.options
        self.lease = lease
        self.record = lease.record  # the type, key and name as this request learns them
        self.upload = tus_state(lease.record)  # as the lease found it
        self.size_before = lease.record.size
        self.length = self.upload.length if self.upload.length is not None else declared
        self.expected = expected
        self.checksum = CHECKSUMS[expected[0]]() if expected else None
        self.unverified = bytearray()  # a checksummed request's bytes, until verified
        self.whole = hasher_at(self.upload.offset, self.upload.hash_state)
        self.received = 0
        self.committed = False
        self.store = ResumableWriter(
            service.uploads,
            self.record.media_id,
            self.upload.stored,
            part_size=self.upload.part_size,
            generation=lease.generation,
            guard=lease.check,
            target=None if self.needs_type else service.target_of(self.record),
        )

    @property
    def needs_type(self) -> bool:
        """A partial upload is not a file of its own: the final upload is sniffed."""
        return not self.record.mime_type and self.upload.concat != "partial"

    def run(self, body: BodyReader, content_length: int | None) -> MediaRecord:
        if self.upload.length is None and self.length is not None:
            self._hold(self.length)  # the length is declared: held before a byte is read
        interrupted: errors.GatewayError | None = None
        try:
            self._read(body)
        except (errors.ClientDisconnected, errors.BodyTimeout) as exc:
            interrupted = exc
        if interrupted is None and content_length is not None and self.received != content_length:
            interrupted = errors.ClientDisconnected(
                f"Received {self.received} of {content_length} bytes."
            )
        if self.checksum is not None and self.expected is not None:
            if interrupted is not None:
                self._release()
                raise interrupted
            if self.checksum.digest() != self.expected[1]:
                self._release()
                raise errors.TusChecksumMismatch()
            self._take(self.unverified)
        offset = self.upload.offset + self.received
        done = self.length is not None and offset == self.length
        if done and self.needs_type:
            self._sniff()
        record = self._commit(offset, done)
        if interrupted is not None:
            raise interrupted
        return record

    def _read(self, body: BodyReader) -> None:
        limit = self.length if self.length is not None else self.service.max_size
        while True:
            chunk = body.read(self.options.read_size)
            if not chunk:
                return
            self.lease.check()  # a request that lost its lease stops reading at once
            end = self.upload.offset + self.received + len(chunk)
            if end > limit:
                raise errors.TooLarge(
                    "The chunk goes past Upload-Length."
                    if self.length is not None
                    else f"The upload grew past the limit of {limit} bytes."
                )
            if self.length is None and end > self.lease.record.size:
                self._hold_ahead(end, limit)
            self.received += len(chunk)
            if self.whole is not None:
                self.whole.update(chunk)
            if self.checksum is None:
                self._take(chunk)
                continue
            if self.received > self.options.max_checksum_chunk:
                raise errors.TooLarge(
                    f"A checksummed chunk may be at most {self.options.max_checksum_chunk} bytes."
                )
            self.checksum.update(chunk)
            self.unverified += chunk

    def _take(self, data: bytes | bytearray) -> None:
        """Bytes that count: to the store, and the type sniffed once enough have come."""
        self.store.write(data)
        if self.needs_type and self.upload.committed + self.store.buffered >= SNIFF_BYTES:
            self._sniff()

    def _hold_ahead(self, end: int, limit: int) -> None:
        """Hold a part's worth ahead (one write per part, not per read); near a quota, exactly
        what arrived."""
        try:
            self._hold(min(end + self.upload.part_size, limit))
        except errors.QuotaExceeded:
            self._hold(end)

    def _hold(self, size: int) -> None:
        """A deferred-length upload holds (for quotas) the bytes it is about to take: its
        record's size grows ahead of them, checked like any write that holds more
        (QuotaExceeded: nothing of this request counts)."""
        self.lease.write(lambda record: record.evolve(size=size))

    def _sniff(self) -> None:
        """The type from the first bytes (no part is written before the type is known). A
        refused type ends the upload: 415, nothing left."""
        try:
            sniffed = checked_type(
                self.store.head(SNIFF_BYTES),
                self.options.allowed_types,
                name=self.record.original_name,
            )
        except errors.UnsupportedType:
            self._reject()
            raise
        self.record = with_type(self.record, sniffed)
        self.store.target = self.service.target_of(self.record)

    def _reject(self) -> None:
        self.lease.stop()
        current = self.service.records.get(self.record.media_id)
        self.service.pending.remove(current, self.service)
        self.store.discard()
        self.service.records.delete(current.media_id)
        self.committed = True  # nothing of this request remains to clean up

    def _commit(self, offset: int, done: bool) -> MediaRecord:
        stored = self.store.commit(final=done, version=self.lease.record.version + 1)
        digest = self.whole.hexdigest() if done and self.whole is not None else ""
        partial = self.upload.concat == "partial"

        def committed(leased: MediaRecord) -> MediaRecord:
            upload = tus_state(leased).holding(
                stored,
                length=self.length,
                offset=offset,
                sha256=digest,
                hash_state="" if done else saved_state(self.whole),
            )
            changes: dict[str, Any] = {
                "upload": upload,
                "mime_type": self.record.mime_type,
                "file_type": self.record.file_type,
                "s3_key": self.record.s3_key,
                # a deferred length holds what arrived (_hold took more while it ran)
                "size": self.length if self.length is not None else offset,
            }
            if done and not partial:
                state = Sha256State.RECEIVED if digest else Sha256State.PENDING
                changes.update(status=Status.STORED, sha256=digest, sha256_state=state)
            return leased.evolve(**changes)

        saved = self.lease.write(committed, last=True)
        self.committed = True
        self.store.release()
        if done:
            self.service.finished(saved)
        return saved

    def _release(self) -> None:
        """Give the upload back unchanged (a refused chunk: the offset stays, and what a
        deferred length took ahead of bytes that did not count is held no more); not when it was
        taken over meanwhile (nothing of ours to give back)."""
        if self.lease.give_back(lambda record: record.evolve(size=self.size_before)):
            self.committed = True

    def cleanup(self) -> None:
        if self.committed:
            return
        self.store.discard()
        try:
            self._release()
        except Exception:
            log.warning("tus cleanup step failed", exc_info=True)
