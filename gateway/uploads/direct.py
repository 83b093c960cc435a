"""Direct-to-S3 uploads: permission, then verification of what S3 really received.

initiate: per promised file (name, type, size, optional SHA-256) a ``pending`` media record
and presigned URLs (one PUT/POST at or under the threshold, multipart parts above it, their
URLs handed out a page at a time). complete: the gateway checks S3 itself — the parts or the
object, the total size, the type its first bytes sniff as, the SHA-256 when promised
(gateway/uploads/direct_verify.py) — and only then marks the record ``stored`` and announces
``media.stored``; anything else is removed from S3 and the record marked ``rejected``. The
stored record's SHA-256 is ``verified`` (as promised), or ``pending`` for processing to compute
(``computed`` here when processing is off).

A single PUT/POST URL stays valid until ``expiresAt``, so it never targets the final key: it
writes the staging key (final key + ``.upload``), and ``complete`` copies exactly the version
it checked (IfMatch / CopySourceIfMatch on its ETag) to the final key, with the gateway's own
headers and metadata only. Whatever the client sends later lands in the staging key only, which
the sweeper removes. Multipart part URLs are bound to an S3 upload id that completing ends, so
multipart uploads target the final key. The pending record's cap, expiry and end are the shared
lifecycle's (gateway/uploads/pending.py). No Flask, no wire format: requests come typed from
the edge (gateway/http/api/direct_requests.py).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway import errors
from gateway.config import S3_MAX_PARTS, MiB
from gateway.media.events import Announcer
from gateway.media.lifecycle import Status, is_visible
from gateway.media.naming import check_project_id, content_disposition, display_name, new_media_id
from gateway.media.principal import Principal
from gateway.media.records import DirectUpload, MediaRecord, MediaStore, Sha256State
from gateway.storage import PartInfo
from gateway.storage.keys import parse_key, staging_key
from gateway.storage.presign import PartUrl, PresignedPost, PresignedRequest, Presigner
from gateway.uploads.direct_verify import (
    ClaimedParts,
    Verifier,
    direct_metadata,
    direct_state,
)
from gateway.uploads.ingest import Destination
from gateway.uploads.pending import PendingUploads
from gateway.uploads.sniff import SniffedType, is_allowed, type_of_mime

log = logging.getLogger(__name__)

# The 409 a finished upload answers to abort or complete, by its status.
_NOT_PENDING: dict[Status, type[errors.GatewayError]] = {
    Status.STORED: errors.UploadStored,
    Status.REJECTED: errors.UploadAlreadyRejected,
    Status.ABORTED: errors.UploadAborted,
    Status.EXPIRED: errors.UploadExpired,
}


@dataclass(frozen=True)
class DirectOptions:
    """The settings direct uploads use, built once (gateway/services.py); docs/settings.md."""

    allowed_types: tuple[str, ...]
    max_filename_chars: int
    max_bytes: int  # per file
    max_files: int  # per initiate
    max_batch_bytes: int  # per initiate, all files together
    max_pending: int  # per caller, every protocol together
    single_put_max: int  # larger files go in parts
    part_size: int  # at least
    part_urls_per_page: int
    url_ttl: int  # seconds
    s3_verifies_sha256: bool
    processing: bool

    def part_size_for(self, size: int) -> int:
        """A part size (whole MiB, at least ``part_size``) that fits ``size`` in S3's parts."""
        needed = -(-size // S3_MAX_PARTS)
        return max(self.part_size, -(-needed // MiB) * MiB)


@dataclass(frozen=True)
class Promise:
    """One file initiate is promised, as the client sent it (the service checks the limits)."""

    filename: str
    content_type: str
    size: int  # positive
    sha256: str | None  # 64 lowercase hex digits


@dataclass(frozen=True)
class Initiate:
    project_id: str
    files: tuple[Promise, ...]  # at least one
    client_signs: bool = False  # signRequests: the client sends each S3 request, signed by sign


@dataclass(frozen=True)
class SignRequest:
    """One S3 request to sign, as @uppy/aws-s3's ``signRequest`` describes it (the type it
    names is not used: the gateway signs the type it was promised)."""

    method: Literal["PUT", "POST", "GET", "DELETE"]
    key: str  # the full bucket key (store prefix included)
    s3_upload_id: str | None
    part: int | None  # with a PUT to an S3 upload id, only there
    expires_in: int | None  # positive


@dataclass(frozen=True)
class Signed:
    url: str
    headers: Mapping[str, str]  # the client must send exactly these
    key: str | None = None  # the full bucket key, where the client needs it


@dataclass(frozen=True)
class Initiated:
    """A pending upload and how its client sends the bytes."""

    record: MediaRecord
    put: PresignedRequest | None = None  # a single upload: a PUT to its staging key ...
    post: PresignedPost | None = None  # ... or a form POST there
    key: str | None = None  # signRequests: the full bucket key the client sends to
    parts: tuple[PartUrl, ...] | None = None  # the first page of part URLs (multipart)


class DirectUploadService:
    def __init__(
        self,
        options: DirectOptions,
        direct: Presigner,
        records: MediaStore,
        announcer: Announcer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        quarantined: bool = False,
    ) -> None:
        self.options = options
        self.direct = direct  # on the quarantine's prefix while scanning is on
        self.quarantined = quarantined
        self.records = records
        self.announcer = announcer
        self.clock = clock
        self.verifier = Verifier(
            direct, options.allowed_types, options.s3_verifies_sha256, options.processing
        )

    @property
    def pending(self) -> PendingUploads:
        """The pending-upload lifecycle, on the service's current records, events and clock."""
        return PendingUploads(self.records, self.announcer, self.options.max_pending, self.clock)

    # -- initiate ----------------------------------------------------------------------------------
    def initiate(self, principal: Principal, request: Initiate) -> list[Initiated]:
        promises = self._within_limits(request)
        principal.check_project(request.project_id)
        self.pending.check_room(principal, len(promises))
        now = self.clock()
        expires_at = (now + timedelta(seconds=self.options.url_ttl)).isoformat(timespec="seconds")
        destination = Destination(principal, request.project_id, quarantined=self.quarantined)
        started: list[Initiated] = []
        try:
            started += (
                self._start(destination, p, now, expires_at, client_signs=request.client_signs)
                for p in promises
            )
            self.records.create_many([i.record for i in started])
        except BaseException:
            for item in started:  # nothing of a refused batch stays
                upload = direct_state(item.record)
                if upload.s3_upload_id:
                    try:
                        self.direct.abort_multipart(item.record.s3_key, upload.s3_upload_id)
                    except errors.GatewayError:
                        log.warning("could not abort %s; the sweeper will", item.record.s3_key)
            raise
        return started

    def _within_limits(self, request: Initiate) -> list[Promise]:
        """The promises, if the batch keeps to the limits; each name made a display name."""
        options, promises = self.options, request.files
        if len(promises) > options.max_files:
            raise errors.FormLimit(f"At most {options.max_files} files per batch.")
        for promise in promises:
            if promise.size > options.max_bytes:
                raise errors.TooLarge(
                    f"{promise.size} bytes is over the limit of {options.max_bytes}."
                )
            promised = type_of_mime(promise.content_type)
            if promised is None or not is_allowed(promised.mime, options.allowed_types):
                raise errors.UnsupportedType(
                    f"contentType {promise.content_type!r} is not allowed; allowed: "
                    f"{', '.join(options.allowed_types)}."
                )
        total = sum(p.size for p in promises)
        if total > options.max_batch_bytes:
            raise errors.TooLarge(
                f"The batch promises {total} bytes; the limit is {options.max_batch_bytes}."
            )
        check_project_id(request.project_id)
        chars = options.max_filename_chars
        return [
            dataclasses.replace(
                p,
                filename=display_name(p.filename, max_chars=chars),
                content_type=_promised_type(p).mime,  # by its canonical name
            )
            for p in promises
        ]

    def _start(
        self,
        destination: Destination,
        promise: Promise,
        now: datetime,
        expires_at: str,
        *,
        client_signs: bool,
    ) -> Initiated:
        sniffed = _promised_type(promise)
        single = promise.size <= self.options.single_put_max
        part_size = self.options.part_size_for(promise.size)
        upload = DirectUpload(
            method="put" if single else "multipart",
            expires_at=expires_at,
            part_size=0 if single else part_size,
            part_count=0 if single else -(-promise.size // part_size),
            promised_sha256=promise.sha256 or "",
        )
        record = destination.draft(
            media_id=new_media_id(),
            original_name=promise.filename,
            sniffed=sniffed,
            size=promise.size,
            sha256="",
            sha256_state=Sha256State.PENDING,
            created_at=now.isoformat(timespec="microseconds"),
            metadata={},
            status=Status.PENDING,
            upload=upload,
        )
        key = staging_key(record.s3_key) if single else record.s3_key
        signed_key = self.direct.full_key(key) if client_signs else None
        if single:
            ttl = self.options.url_ttl
            put = self._presign_put(record, ttl)
            post = self.direct.presign_post(
                key, content_type=promise.content_type, size=promise.size, expires_in=ttl
            )
            return Initiated(record, put=put, post=post, key=signed_key)
        if client_signs:
            return Initiated(record, key=signed_key)
        s3_upload_id = self.direct.start_multipart(
            key,
            content_type=promise.content_type,
            content_disposition=content_disposition(promise.filename),
            metadata=direct_metadata(record),
        )
        record = record.evolve(upload=dataclasses.replace(upload, s3_upload_id=s3_upload_id))
        first_page = self._part_urls(record, 1, self.options.part_urls_per_page)
        return Initiated(record, parts=tuple(first_page))

    def _presign_put(self, record: MediaRecord, ttl: int) -> PresignedRequest:
        """The PUT of a single upload to its staging key: its type, length and SHA-256."""
        sha = direct_state(record).promised_sha256
        return self.direct.presign_put(
            staging_key(record.s3_key),
            content_type=record.mime_type,
            size=record.size,
            sha256_b64=base64.b64encode(binascii.unhexlify(sha)).decode() if sha else None,
            expires_in=ttl,
        )

    def _part_urls(self, record: MediaRecord, first: int, count: int) -> list[PartUrl]:
        upload = direct_state(record)
        numbers = range(first, min(upload.part_count, first + count - 1) + 1)
        sizes = [min(upload.part_size, record.size - (n - 1) * upload.part_size) for n in numbers]
        return self.direct.presign_parts(
            record.s3_key,
            upload.s3_upload_id,
            list(zip(numbers, sizes, strict=True)),
            self.options.url_ttl,
        )

    def part_urls(
        self, principal: Principal, upload_id: str, *, first: int = 1, count: int | None = None
    ) -> list[PartUrl]:
        """More part URLs of a pending multipart upload (initiate hands out the first page);
        ``count`` defaults to a page."""
        record = self.get(principal, upload_id)
        upload = direct_state(record)
        self._require_pending(record)
        if upload.method != "multipart":
            raise errors.InvalidPartRange("This upload is a single PUT/POST: it has no parts.")
        if not upload.s3_upload_id:
            raise errors.InvalidPartRange(
                "This upload's client creates the multipart upload and has each request signed "
                "(POST /api/uploads/sign)."
            )
        per_page = self.options.part_urls_per_page
        count = per_page if count is None else count
        if not 1 <= first <= upload.part_count or not 1 <= count <= per_page:
            raise errors.InvalidPartRange(
                f"first must be 1-{upload.part_count} and count 1-{per_page}."
            )
        return self._part_urls(record, first, count)

    # -- signing a client's own S3 requests (signRequests) ---------------------------------------
    def sign(self, principal: Principal, request: SignRequest) -> Signed:
        """A presigned URL for one S3 request of a pending upload the caller owns, and only one
        its method allows: PutObject on a single upload's staging key; CreateMultipartUpload,
        UploadPart (1..partCount, bound to that part's exact length), ListParts,
        CompleteMultipartUpload and AbortMultipartUpload on a multipart upload's key. The first
        request that names an S3 upload id ties the record to it (once S3 confirms it exists
        for the key); any other id is refused. A URL is valid until the upload expires at the
        latest. ``complete`` still checks what S3 holds."""
        record, staging = self._signed_upload(principal, request.key)
        self._require_pending(record)
        if self.pending.is_overdue(record):
            raise errors.UploadExpired()
        upload = direct_state(record)
        ttl = self._url_ttl(upload, request.expires_in)
        method, s3_upload_id, part = request.method, request.s3_upload_id, request.part
        if upload.method == "put":
            if (method, s3_upload_id, staging) != ("PUT", None, True):
                raise errors.InvalidSignRequest("A single upload is one PutObject to its key.")
            signed = self._presign_put(record, ttl)
            headers = {k: v for k, v in signed.headers.items() if k != "Content-Length"}
            return Signed(signed.url, headers, self.direct.full_key(staging_key(record.s3_key)))
        if staging:
            raise errors.InvalidSignRequest("A multipart upload goes to the upload's own key.")
        if s3_upload_id is None:
            if method != "POST":
                raise errors.InvalidSignRequest("Only a multipart upload can be signed here.")
            if upload.s3_upload_id:
                raise errors.UploadIdMismatch("This upload's multipart upload exists already.")
            return self._sign_create(record, ttl)
        params: dict[str, Any] = {"UploadId": s3_upload_id}
        if method == "PUT":
            # Checked before the id is adopted: a refused request changes nothing.
            if part is None or not 1 <= part <= upload.part_count:
                raise errors.InvalidPartRange(f"partNumber must be 1-{upload.part_count}.")
            size = min(upload.part_size, record.size - (part - 1) * upload.part_size)
            operation = "upload_part"
            params.update(PartNumber=part, ContentLength=size)
        else:
            operation = {
                "GET": "list_parts",
                "POST": "complete_multipart_upload",
                "DELETE": "abort_multipart_upload",
            }[method]
        self._adopt(record, s3_upload_id)
        url = self.direct.presign(operation, record.s3_key, expires_in=ttl, method=method, **params)
        return Signed(url, {})

    def _signed_upload(self, principal: Principal, full_key: str) -> tuple[MediaRecord, bool]:
        """(the upload, whether ``full_key`` is its staging key): the key must be exactly the
        upload's key or its staging key (any other key is no upload: 404)."""
        key = self.direct.relative_key(full_key)
        media_id, staging = parse_key(key) if key is not None else (None, False)
        if media_id is None:
            raise errors.UploadNotFound()
        record = self.get(principal, media_id)
        if key != (staging_key(record.s3_key) if staging else record.s3_key):
            raise errors.UploadNotFound()
        return record, staging

    def _url_ttl(self, upload: DirectUpload, asked: int | None) -> int:
        """direct_url_ttl, or less when the client asks, and never past the upload's expiry
        (a URL signed late must not outlive the upload the sweeper then cleans up)."""
        left = datetime.fromisoformat(upload.expires_at) - self.clock()
        ttl = min(self.options.url_ttl, int(left.total_seconds()))
        if asked is not None:
            ttl = min(ttl, asked)
        return max(1, ttl)

    def _sign_create(self, record: MediaRecord, ttl: int) -> Signed:
        """CreateMultipartUpload with the gateway's own type, disposition and metadata: the
        client must send exactly these headers (they are signed)."""
        disposition = content_disposition(record.original_name)
        metadata = direct_metadata(record)
        url = self.direct.presign(
            "create_multipart_upload",
            record.s3_key,
            expires_in=ttl,
            method="POST",
            ContentType=record.mime_type,
            ContentDisposition=disposition,
            Metadata=metadata,
        )
        headers = {"Content-Type": record.mime_type, "Content-Disposition": disposition}
        headers.update({f"x-amz-meta-{name}": value for name, value in metadata.items()})
        return Signed(url, headers, self.direct.full_key(record.s3_key))

    def _adopt(self, record: MediaRecord, s3_upload_id: str) -> None:
        """Tie the record to the client's multipart upload, once; S3 must know it for the key."""
        upload = direct_state(record)
        if upload.s3_upload_id == s3_upload_id:
            return
        if upload.s3_upload_id:
            raise errors.UploadIdMismatch()
        if self.direct.list_parts(record.s3_key, s3_upload_id) is None:
            raise errors.UploadIdMismatch("S3 has no such multipart upload for this key.")
        adopted = dataclasses.replace(upload, s3_upload_id=s3_upload_id)
        if self.records.update(record.evolve(upload=adopted), expected=record) is None:
            current = self.records.get(record.media_id)  # a concurrent request moved it first
            self._require_pending(current)
            if direct_state(current).s3_upload_id != s3_upload_id:
                raise errors.UploadIdMismatch()

    # -- the upload's life -----------------------------------------------------------------------
    def get(self, principal: Principal, upload_id: str) -> MediaRecord:
        """A direct upload the caller may act on (others' are 404)."""
        return self.pending.get_owned(principal, upload_id, DirectUpload)

    def received(self, record: MediaRecord) -> list[PartInfo]:
        """Parts S3 holds so far for a pending multipart upload."""
        upload = direct_state(record)
        if record.status is not Status.PENDING or not upload.s3_upload_id:
            return []
        return self.direct.list_parts(record.s3_key, upload.s3_upload_id) or []

    def complete(
        self, principal: Principal, upload_id: str, parts: ClaimedParts | None
    ) -> MediaRecord:
        """Verify and commit; returns the record, ``stored`` or ``rejected`` (same on a repeat).
        ``parts``: what the client says it sent (a multipart upload S3 still holds needs it)."""
        return self._complete(self.get(principal, upload_id), parts)

    def complete_from_event(self, media_id: str) -> MediaRecord | None:
        """S3 said a single PUT/POST landed on its staging key: complete it as if the client
        had asked (clients that never call ``complete`` are still stored and processed).
        Nothing happens for an upload that is no longer pending or not a single PUT/POST."""
        try:
            record = self.records.get(media_id)
        except errors.MediaNotFound:
            return None
        upload = record.upload
        if not isinstance(upload, DirectUpload) or upload.method != "put":
            return None
        if record.status is not Status.PENDING:
            return record
        try:
            return self._complete(record, None)
        except (
            errors.UploadIncomplete,
            errors.UploadChanged,
            errors.UploadExpired,
            errors.UploadAborted,
        ):
            return None  # a later event, or the client, finishes it (or it has ended)

    def _complete(self, record: MediaRecord, parts: ClaimedParts | None) -> MediaRecord:
        if record.status is Status.REJECTED or is_visible(record.status):
            return record
        self._require_pending(record)
        if self.pending.is_overdue(record):
            if self.pending.expire(record, self) is None:
                self._after_race(record, remove=False)
            raise errors.UploadExpired()
        try:
            checked = self.verifier.verify(record, parts)
        except (
            errors.UploadChanged,
            errors.UploadAborted,
            errors.UploadIncomplete,
            errors.StorageError,
        ):
            # Another request (a concurrent complete, an abort, the sweeper) may have moved
            # the upload on while S3 was being checked: its decision is the answer. An abort
            # that deleted the object before it was looked at leaves "nothing there" too.
            current = self.records.get(record.media_id)
            if current.status is Status.PENDING:
                raise
            return self._decided(current)
        if checked.reason is not None:
            return self._finish(record, Status.REJECTED, checked.reason)
        completed = dataclasses.replace(
            direct_state(record), completed_at=self.clock().isoformat(timespec="seconds")
        )
        stored = self.pending.mark_stored(
            record,
            record.evolve(
                status=Status.STORED,
                sha256=checked.sha256,
                sha256_state=checked.sha256_state,
                upload=completed,
            ),
        )
        if stored is None:
            # Aborted or expired while we verified: the object we completed must not stay.
            return self._after_race(record, remove=True)
        return stored

    def abort(self, principal: Principal, upload_id: str) -> MediaRecord:
        record = self.get(principal, upload_id)
        if record.status is Status.ABORTED:
            return record
        self._require_pending(record)
        return self._finish(record, Status.ABORTED, "Aborted by the client.")

    # -- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _require_pending(record: MediaRecord) -> None:
        if record.status is not Status.PENDING:
            raise _NOT_PENDING.get(record.status, errors.UploadStored)()

    @staticmethod
    def _decided(current: MediaRecord) -> MediaRecord:
        """Answer with what another request decided: stored or rejected as is, the rest 409."""
        if current.status is Status.REJECTED or is_visible(current.status):
            return current
        raise _NOT_PENDING.get(current.status, errors.UploadStored)()

    def _finish(self, record: MediaRecord, status: Status, reason: str) -> MediaRecord:
        """End the upload (gateway/uploads/pending.py); a lost race answers what the winner
        decided."""
        final = self.pending.end(record, status, reason, self)
        return final if final is not None else self._after_race(record, remove=False)

    def remove_parts(self, record: MediaRecord) -> None:
        """What S3 holds for the upload (the ``PartsRemover`` of direct uploads)."""
        upload = direct_state(record)
        if upload.method == "multipart" and upload.s3_upload_id:
            self.direct.abort_multipart(record.s3_key, upload.s3_upload_id)
        elif upload.method == "multipart":
            # signRequests, no id adopted yet: a multipart upload the client created may
            # still exist (one later than this look is a stray the sweeper aborts).
            for s3_upload_id in self.direct.multipart_uploads(record.s3_key):
                self.direct.abort_multipart(record.s3_key, s3_upload_id)
        else:
            self.direct.delete(staging_key(record.s3_key))  # what the PUT/POST URL wrote
        self.direct.delete(record.s3_key)  # a copied single upload, or a completed multipart

    def _after_race(self, record: MediaRecord, *, remove: bool) -> MediaRecord:
        """Another request moved the record first: answer with what it decided."""
        current = self.records.get(record.media_id)
        if remove and not (current.status is Status.REJECTED or is_visible(current.status)):
            self.pending.remove(record, self)
        return self._decided(current)


def _promised_type(promise: Promise) -> SniffedType:
    """The type a promise names (checked to be a known one by ``_within_limits``)."""
    promised = type_of_mime(promise.content_type)
    assert promised is not None
    return promised
