"""What a direct upload's ``complete`` finds in S3, checked against what initiate promised
(gateway/uploads/direct.py): the parts or the object, the total size, the type its first bytes
sniff as, the SHA-256 when promised. Every read is pinned to the ETag of the version checked; a
single upload's checked version is then copied from its staging key to its key. No Flask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import errors
from gateway.media.naming import content_disposition
from gateway.media.records import DirectUpload, MediaRecord, Sha256State
from gateway.storage import ObjectHead
from gateway.storage.keys import staging_key
from gateway.storage.presign import Presigner
from gateway.uploads.ingest import checked_type, record_metadata
from gateway.uploads.sniff import SNIFF_BYTES
from gateway.uploads.sniff_audio import twin

log = logging.getLogger(__name__)

SHA256_DIFFERS = "The SHA-256 of what S3 holds differs from the one promised."
ClaimedParts = tuple[tuple[int, str], ...]  # (partNumber, ETag without quotes), as the client sent


def direct_state(record: MediaRecord) -> DirectUpload:
    assert isinstance(record.upload, DirectUpload)
    return record.upload


def direct_metadata(record: MediaRecord) -> dict[str, str]:
    """The stored object's metadata, the gateway's own (never what a client sent)."""
    return record_metadata(record, sha256=direct_state(record).promised_sha256)


@dataclass(frozen=True)
class Checked:
    """What ``complete`` found in S3: why the object is refused (None: it is as promised), and
    the SHA-256 the stored record gets, with how it is known."""

    reason: str | None
    sha256: str = ""
    sha256_state: Sha256State = Sha256State.PENDING


@dataclass(frozen=True)
class Verifier:
    direct: Presigner  # on the quarantine's prefix while scanning is on
    allowed_types: tuple[str, ...]
    s3_verifies_sha256: bool  # the store refuses a PUT whose checksum header is not its bytes'
    processing: bool  # processing reads (and hashes) every stored object anyway

    def verify(self, record: MediaRecord, parts: ClaimedParts | None) -> Checked:
        """What S3 holds, checked against the promise (as promised: the object is complete).
        Raises ``UploadIncomplete`` (nothing there yet), ``UploadAborted``, ``UploadChanged``."""
        upload = direct_state(record)
        source, head = record.s3_key, None
        if upload.method == "multipart":
            reason = self._verify_parts(record, parts)
            if reason is not None:
                return Checked(reason)
        else:
            source = staging_key(record.s3_key)
            head = self.direct.head(source)
            if head is None:
                # An earlier complete copied the bytes and failed before the record said so:
                # only the gateway writes the final key, so go on from there.
                source = record.s3_key
        head = head or self.direct.head(source)
        if head is None:
            raise errors.UploadIncomplete()
        checked = self._check_object(record, source, head)
        if checked.reason is None and source != record.s3_key:
            self.direct.copy(
                source,
                record.s3_key,
                if_match=head.etag,
                content_type=record.mime_type,
                content_disposition=content_disposition(record.original_name),
                metadata=direct_metadata(record),
            )
            try:
                self.direct.delete(source)
            except errors.GatewayError:  # the record is stored soon: the sweeper removes it
                log.warning("could not delete %s; the sweeper will", source, exc_info=True)
        return checked

    def _check_object(self, record: MediaRecord, key: str, head: ObjectHead) -> Checked:
        """Check the object version ``head`` describes (every read is IfMatch its ETag)."""
        if head.size != record.size:
            return Checked(f"S3 holds {head.size} bytes; {record.size} were promised.")
        first_bytes = self.direct.read_head(
            key, min(SNIFF_BYTES, record.size), if_match=head.etag or None
        )
        try:
            sniffed = checked_type(first_bytes, self.allowed_types, name=record.original_name)
        except errors.UnsupportedType as exc:
            return Checked(exc.message)
        if record.mime_type not in (sniffed.mime, twin(sniffed.mime)):
            # The container's other type is as good a promise (a browser names an audio-only
            # WebM video/webm): the worker settles which it is.
            return Checked(f"The content is {sniffed.mime}; {record.mime_type} was promised.")
        return self._check_sha256(record, key, head)

    def _check_sha256(self, record: MediaRecord, key: str, head: ObjectHead) -> Checked:
        """A promised SHA-256 is checked: by S3 itself where it verifies a PUT's checksum header
        (``s3_verifies_sha256``, and the object has one), else by reading the object back.
        Without a promise the hash is left to processing, which reads the object anyway
        (bench/direct_sha256.py measures what a read here would add); with processing off
        nothing else ever reads it, so it is read back here."""
        promised = direct_state(record).promised_sha256
        etag = head.etag or None
        if promised and self.s3_verifies_sha256:
            reported = self.direct.reported_sha256(key, if_match=etag)
            if reported is not None:
                if reported != promised:
                    return Checked(SHA256_DIFFERS)
                return Checked(None, promised, Sha256State.VERIFIED)
        if not promised and self.processing:
            return Checked(None)
        actual = self.direct.sha256(key, if_match=etag)
        if not promised:
            return Checked(None, actual, Sha256State.COMPUTED)
        if actual != promised:
            return Checked(SHA256_DIFFERS)
        return Checked(None, actual, Sha256State.VERIFIED)

    def _verify_parts(self, record: MediaRecord, claimed: ClaimedParts | None) -> str | None:
        """The parts S3 holds against the promise and the client's list, then completed."""
        upload = direct_state(record)
        held = (
            self.direct.list_parts(record.s3_key, upload.s3_upload_id)
            if upload.s3_upload_id
            else None
        )
        if held is None:
            # Gone (or never begun): completed by an earlier complete, a concurrent one that
            # failed before the record said so, or the client itself (signRequests); or aborted.
            # The object decides; its checks follow.
            if self.direct.head(record.s3_key) is not None:
                return None
            if not upload.s3_upload_id:
                raise errors.UploadIncomplete()
            raise errors.UploadAborted("The multipart upload no longer exists.")
        if claimed is None:
            raise errors.InvalidParts()
        expected = list(range(1, upload.part_count + 1))
        if [p.number for p in held] != expected:
            return (
                f"S3 holds parts {[p.number for p in held]}; "
                f"parts 1-{upload.part_count} were expected."
            )
        if sorted(claimed) != [(p.number, p.etag) for p in held]:
            return "The parts and ETags sent do not match what S3 received."
        total = sum(p.size for p in held)
        if total != record.size:
            return f"S3 holds {total} bytes; {record.size} were promised."
        if any(p.size != upload.part_size for p in held[:-1]):
            return "A part other than the last is not the agreed part size."
        self.direct.complete_multipart(record.s3_key, upload.s3_upload_id, held)
        return None
