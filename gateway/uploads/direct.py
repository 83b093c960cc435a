"""Direct-to-S3 uploads: permission, then verification of what S3 really received.

initiate: per promised file (name, type, size, optional SHA-256) a ``pending`` media record
and presigned URLs (one PUT/POST at or under the threshold, multipart parts above it, their
URLs handed out a page at a time). complete: the gateway checks S3 itself — the parts or the
object, the total size, the type its first bytes sniff as, the SHA-256 when promised — and
only then marks the record ``stored`` and announces ``media.stored``; anything else is removed
from S3 and the record marked ``rejected``. The stored record's SHA-256 is ``verified`` (as
promised), or ``pending`` for processing to compute (``computed`` here when processing is off).

A single PUT/POST URL stays valid until ``expiresAt``, so it never targets the final key: it
writes the staging key (final key + ``.upload``), and ``complete`` copies exactly the version
it checked (IfMatch / CopySourceIfMatch on its ETag) to the final key, with the gateway's own
headers and metadata only. Whatever the client sends later lands in the staging key only, which
the sweeper removes. Multipart part URLs are bound to an S3 upload id that completing ends, so
multipart uploads target the final key. No Flask in here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway import errors
from gateway.config import Settings
from gateway.media.events import Announcer
from gateway.media.lifecycle import Status, is_visible
from gateway.media.naming import check_project_id, content_disposition, display_name, new_media_id
from gateway.media.principal import Principal
from gateway.media.records import DirectUpload, MediaRecord, MediaStore, Sha256State
from gateway.storage import ObjectHead, PartInfo
from gateway.storage.keys import parse_key, staging_key
from gateway.uploads.form import SHA256_RE
from gateway.uploads.ingest import Destination, checked_type, object_metadata, record_metadata
from gateway.uploads.pending import EXPIRE_LIMIT, EXPIRED_REASONS, PendingUploads
from gateway.uploads.sniff import SNIFF_BYTES, is_allowed, type_of_mime
from gateway.uploads.sniff_audio import twin

if TYPE_CHECKING:
    from gateway.storage.s3_direct import S3DirectUploads  # only S3 has direct uploads

log = logging.getLogger(__name__)

# The 409 a finished upload answers to abort or complete, by its status.
_NOT_PENDING: dict[Status, type[errors.GatewayError]] = {
    Status.STORED: errors.UploadStored,
    Status.REJECTED: errors.UploadAlreadyRejected,
    Status.ABORTED: errors.UploadAborted,
    Status.EXPIRED: errors.UploadExpired,
}


@dataclass(frozen=True)
class SignRequest:
    """One S3 request to sign, as @uppy/aws-s3's ``signRequest`` describes it:
    ``{method, key, uploadId?, partNumber?, contentType?, expiresIn?}`` (contentType is not
    used: the gateway signs the type it was promised)."""

    method: str
    key: str  # the full bucket key (store prefix included)
    s3_upload_id: str | None
    part: int | None
    expires_in: int | None


def _signable(request: Any) -> SignRequest:
    if not isinstance(request, dict):
        raise errors.InvalidSignRequest("The body must be a JSON object.")
    method, key = request.get("method"), request.get("key")
    s3_upload_id, part = request.get("uploadId"), request.get("partNumber")
    expires_in = request.get("expiresIn")
    if method not in ("PUT", "POST", "GET", "DELETE") or not isinstance(key, str) or not key:
        raise errors.InvalidSignRequest("method must be PUT, POST, GET or DELETE, with a key.")
    if s3_upload_id is not None and (not isinstance(s3_upload_id, str) or not s3_upload_id):
        raise errors.InvalidSignRequest("uploadId must be a non-empty string.")
    if part is not None and (not isinstance(part, int) or isinstance(part, bool)):
        raise errors.InvalidPartRange("partNumber must be an integer.")
    if (part is not None) != (method == "PUT" and s3_upload_id is not None):
        raise errors.InvalidSignRequest("partNumber goes with a PUT to an uploadId, only there.")
    if method == "DELETE" and s3_upload_id is None:
        raise errors.InvalidSignRequest("Objects are deleted through the gateway, not signed.")
    if expires_in is not None and (
        not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 1
    ):
        raise errors.InvalidSignRequest("expiresIn must be a positive number of seconds.")
    return SignRequest(method, key, s3_upload_id, part, expires_in)


@dataclass(frozen=True)
class Promise:
    filename: str
    content_type: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Checked:
    """What ``complete`` found in S3: why the object is refused (None: it is as promised), and
    the SHA-256 the stored record gets, with how it is known."""

    reason: str | None
    sha256: str = ""
    sha256_state: Sha256State = Sha256State.PENDING


SHA256_DIFFERS = "The SHA-256 of what S3 holds differs from the one promised."


@dataclass(frozen=True)
class Initiated:
    record: MediaRecord
    instructions: dict[str, Any]  # how the client sends the bytes (URLs, fields, headers)


class DirectUploadService:
    def __init__(
        self,
        settings: Settings,
        direct: S3DirectUploads,
        records: MediaStore,
        announcer: Announcer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        quarantined: bool = False,
    ) -> None:
        self.settings = settings
        self.direct = direct  # on the quarantine's prefix while scanning is on
        self.quarantined = quarantined
        self.records = records
        self.announcer = announcer
        self.clock = clock

    @property
    def pending(self) -> PendingUploads:
        """The pending-upload lifecycle, on the service's current records, events and clock."""
        return PendingUploads(
            self.records, self.announcer, self.settings.direct_max_pending, self.clock
        )

    # -- initiate ----------------------------------------------------------------------------------
    def parse_promises(self, payload: Any) -> tuple[str, list[Promise]]:
        if not isinstance(payload, dict):
            raise errors.InvalidJson("The body must be a JSON object.")
        project_id = payload.get("projectId")
        if not isinstance(project_id, str):
            raise errors.MissingProjectId()
        files = payload.get("files")
        cap = self.settings.direct_max_files
        if not isinstance(files, list) or not files:
            raise errors.InvalidFiles("files must be a non-empty list.")
        if len(files) > cap:
            raise errors.FormLimit(f"At most {cap} files per batch.")
        promises = [self._promise(f) for f in files]
        total, batch_cap = sum(p.size for p in promises), self.settings.direct_max_batch_bytes
        if total > batch_cap:
            raise errors.TooLarge(f"The batch promises {total} bytes; the limit is {batch_cap}.")
        return check_project_id(project_id), promises

    def _promise(self, item: Any) -> Promise:
        if not isinstance(item, dict):
            raise errors.InvalidFiles("Each file must be an object.")
        filename, content_type = item.get("filename", ""), item.get("contentType")
        size, sha256 = item.get("size"), item.get("sha256")
        if not isinstance(filename, str):
            raise errors.InvalidFiles("filename must be a string.")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise errors.InvalidSize()
        if size > self.settings.direct_max_bytes:
            raise errors.TooLarge(
                f"{size} bytes is over the limit of {self.settings.direct_max_bytes}."
            )
        promised = type_of_mime(content_type) if isinstance(content_type, str) else None
        if promised is None or not is_allowed(promised.mime, self.settings.allowed_types):
            raise errors.UnsupportedType(
                f"contentType {content_type!r} is not allowed; allowed: "
                f"{', '.join(self.settings.allowed_types)}."
            )
        if sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256)):
            raise errors.InvalidSha256("sha256 must be 64 lowercase hexadecimal characters.")
        return Promise(
            display_name(filename, max_chars=self.settings.max_filename_chars),
            promised.mime,
            size,
            sha256,
        )

    @staticmethod
    def parse_signing(payload: Any) -> bool:
        """``signRequests``: the client sends every S3 request itself, each signed by ``sign``
        (Uppy's @uppy/aws-s3 ``signRequest``); a multipart upload is then the client's to create."""
        value = payload.get("signRequests", False) if isinstance(payload, dict) else False
        if not isinstance(value, bool):
            raise errors.InvalidJson("signRequests must be true or false.")
        return value

    def initiate(
        self,
        principal: Principal,
        project_id: str,
        promises: list[Promise],
        *,
        client_signs: bool = False,
    ) -> list[Initiated]:
        principal.check_project(project_id)
        self.pending.check_room(principal, len(promises))
        now = self.clock()
        expires_at = (now + timedelta(seconds=self.settings.direct_url_ttl)).isoformat(
            timespec="seconds"
        )
        destination = Destination(principal, project_id, quarantined=self.quarantined)
        started: list[Initiated] = []
        try:
            started += (
                self._start(destination, p, now, expires_at, client_signs=client_signs)
                for p in promises
            )
            self.records.create_many([i.record for i in started])
        except BaseException:
            for item in started:  # nothing of a refused batch stays
                upload = item.record.upload
                if upload is not None and upload.s3_upload_id:
                    try:
                        self.direct.abort_multipart(item.record.s3_key, upload.s3_upload_id)
                    except errors.GatewayError:
                        log.warning("could not abort %s; the sweeper will", item.record.s3_key)
            raise
        return started

    def _start(
        self,
        destination: Destination,
        promise: Promise,
        now: datetime,
        expires_at: str,
        *,
        client_signs: bool,
    ) -> Initiated:
        media_id = new_media_id()
        sniffed = type_of_mime(promise.content_type)
        assert sniffed is not None  # checked when the promise was read
        key = destination.key(media_id, sniffed)
        ttl = self.settings.direct_url_ttl
        instructions: dict[str, Any]
        if promise.size <= self.settings.direct_single_put_max:
            sha_b64 = (
                base64.b64encode(binascii.unhexlify(promise.sha256)).decode()
                if promise.sha256
                else None
            )
            upload = DirectUpload(
                method="put", expires_at=expires_at, promised_sha256=promise.sha256 or ""
            )
            staging = staging_key(key)
            instructions = {
                "method": "put",
                "put": self.direct.presign_put(
                    staging,
                    content_type=promise.content_type,
                    size=promise.size,
                    sha256_b64=sha_b64,
                    expires_in=ttl,
                ),
                "post": self.direct.presign_post(
                    staging, content_type=promise.content_type, size=promise.size, expires_in=ttl
                ),
            }
            if client_signs:
                instructions["key"] = self.direct.store.full_key(staging)
        elif client_signs:
            part_size = self.settings.direct_part_size_for(promise.size)
            upload = DirectUpload(
                method="multipart",
                expires_at=expires_at,
                part_size=part_size,
                part_count=-(-promise.size // part_size),
                promised_sha256=promise.sha256 or "",
            )
            instructions = {
                "method": "multipart",
                "key": self.direct.store.full_key(key),
                "multipart": {"partSize": part_size, "partCount": upload.part_count},
            }
        else:
            part_size = self.settings.direct_part_size_for(promise.size)
            count = -(-promise.size // part_size)
            s3_upload_id = self.direct.start_multipart(
                key,
                content_type=promise.content_type,
                content_disposition=content_disposition(promise.filename),
                metadata=object_metadata(
                    media_id=media_id,
                    project_id=destination.project_id,
                    owner=destination.principal.subject,
                    original_name=promise.filename,
                    sha256=promise.sha256 or "",
                ),
            )
            upload = DirectUpload(
                method="multipart",
                expires_at=expires_at,
                s3_upload_id=s3_upload_id,
                part_size=part_size,
                part_count=count,
                promised_sha256=promise.sha256 or "",
            )
            instructions = {
                "method": "multipart",
                "multipart": {
                    "partSize": part_size,
                    "partCount": count,
                    "parts": self._part_urls(
                        key, upload, promise.size, 1, self.settings.direct_part_urls_per_page
                    ),
                },
            }
        record = destination.draft(
            media_id=media_id,
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
        return Initiated(record, {**instructions, "expiresAt": expires_at})

    def _part_urls(
        self, key: str, upload: DirectUpload, size: int, first: int, count: int
    ) -> list[dict[str, Any]]:
        last = min(upload.part_count, first + count - 1)
        numbers = range(first, last + 1)
        sizes = [min(upload.part_size, size - (n - 1) * upload.part_size) for n in numbers]
        return self.direct.presign_parts(
            key,
            upload.s3_upload_id,
            list(zip(numbers, sizes, strict=True)),
            self.settings.direct_url_ttl,
        )

    def part_urls(
        self, principal: Principal, upload_id: str, *, first: int, count: int
    ) -> list[dict[str, Any]]:
        """More part URLs of a pending multipart upload (initiate hands out the first page)."""
        record = self.get(principal, upload_id)
        upload = self._upload(record)
        if record.status is not Status.PENDING:
            raise _NOT_PENDING[record.status]()
        if upload.method != "multipart":
            raise errors.InvalidPartRange("This upload is a single PUT/POST: it has no parts.")
        if not upload.s3_upload_id:
            raise errors.InvalidPartRange(
                "This upload's client creates the multipart upload and has each request signed "
                "(POST /api/uploads/sign)."
            )
        per_page = self.settings.direct_part_urls_per_page
        if not 1 <= first <= upload.part_count or not 1 <= count <= per_page:
            raise errors.InvalidPartRange(
                f"first must be 1-{upload.part_count} and count 1-{per_page}."
            )
        return self._part_urls(record.s3_key, upload, record.size, first, count)

    # -- signing a client's own S3 requests (signRequests) ---------------------------------------
    def sign(self, principal: Principal, request: Any) -> dict[str, Any]:
        """A presigned URL for one S3 request of a pending upload the caller owns, and only one
        its method allows: PutObject on a single upload's staging key; CreateMultipartUpload,
        UploadPart (1..partCount, bound to that part's exact length), ListParts,
        CompleteMultipartUpload and AbortMultipartUpload on a multipart upload's key. The first
        request that names an S3 upload id ties the record to it (once S3 confirms it exists
        for the key); any other id is refused. A URL is valid until the upload expires at the
        latest. ``complete`` still checks what S3 holds."""
        signable = _signable(request)
        record, staging = self._signed_upload(principal, signable.key)
        self._require_pending(record)
        if self.pending.is_overdue(record):
            raise errors.UploadExpired()
        upload = self._upload(record)
        ttl = self._url_ttl(upload, signable.expires_in)
        method, s3_upload_id, part = signable.method, signable.s3_upload_id, signable.part
        if upload.method == "put":
            if (method, s3_upload_id, staging) != ("PUT", None, True):
                raise errors.InvalidSignRequest("A single upload is one PutObject to its key.")
            sha = upload.promised_sha256
            signed = self.direct.presign_put(
                staging_key(record.s3_key),
                content_type=record.mime_type,
                size=record.size,
                sha256_b64=base64.b64encode(binascii.unhexlify(sha)).decode() if sha else None,
                expires_in=ttl,
            )
            headers = {k: v for k, v in signed["headers"].items() if k != "Content-Length"}
            full_key = self.direct.store.full_key(staging_key(record.s3_key))
            return {"url": signed["url"], "headers": headers, "key": full_key}
        if staging:
            raise errors.InvalidSignRequest("A multipart upload goes to the upload's own key.")
        if s3_upload_id is None:
            if method != "POST":
                raise errors.InvalidSignRequest("Only a multipart upload can be signed here.")
            if upload.s3_upload_id:
                raise errors.UploadIdMismatch("This upload's multipart upload exists already.")
            return self._sign_create(record, ttl, self.direct.store.full_key(record.s3_key))
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
        return {"url": url, "headers": {}}

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
        ttl = min(self.settings.direct_url_ttl, int(left.total_seconds()))
        if asked is not None:
            ttl = min(ttl, asked)
        return max(1, ttl)

    def _sign_create(self, record: MediaRecord, ttl: int, full_key: str) -> dict[str, Any]:
        """CreateMultipartUpload with the gateway's own type, disposition and metadata: the
        client must send exactly these headers (they are signed)."""
        disposition = content_disposition(record.original_name)
        metadata = self._object_metadata(record)
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
        return {"url": url, "headers": headers, "key": full_key}

    def _object_metadata(self, record: MediaRecord) -> dict[str, str]:
        """The stored object's metadata, the gateway's own (never what a client sent)."""
        return record_metadata(record, sha256=self._upload(record).promised_sha256)

    def _adopt(self, record: MediaRecord, s3_upload_id: str) -> None:
        """Tie the record to the client's multipart upload, once; S3 must know it for the key."""
        upload = self._upload(record)
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
            if self._upload(current).s3_upload_id != s3_upload_id:
                raise errors.UploadIdMismatch()

    # -- the upload's life -----------------------------------------------------------------------
    def get(self, principal: Principal, upload_id: str) -> MediaRecord:
        """A direct upload the caller may act on (others' are 404)."""
        return self.pending.get_owned(principal, upload_id, DirectUpload)

    @staticmethod
    def _upload(record: MediaRecord) -> DirectUpload:
        assert isinstance(record.upload, DirectUpload)
        return record.upload

    def received(self, record: MediaRecord) -> list[PartInfo]:
        """Parts S3 holds so far for a pending multipart upload."""
        upload = self._upload(record)
        if record.status is not Status.PENDING or not upload.s3_upload_id:
            return []
        return self.direct.list_parts(record.s3_key, upload.s3_upload_id) or []

    def complete(self, principal: Principal, upload_id: str, payload: Any) -> MediaRecord:
        """Verify and commit; returns the record, ``stored`` or ``rejected`` (same on a repeat)."""
        return self._complete(self.get(principal, upload_id), payload)

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

    def _complete(self, record: MediaRecord, payload: Any) -> MediaRecord:
        if record.status is Status.REJECTED or is_visible(record.status):
            return record
        self._require_pending(record)
        if self.pending.is_overdue(record):
            self._finish(record, Status.EXPIRED, EXPIRED_REASONS[DirectUpload])
            raise errors.UploadExpired()
        try:
            checked = self._verify(record, payload)
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
            self._upload(record), completed_at=self.clock().isoformat(timespec="seconds")
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

    def expire_overdue(
        self, *, now: datetime | None = None, limit: int = EXPIRE_LIMIT
    ) -> list[str]:
        """The sweeper's part: pending direct uploads past their expiry, expired and removed."""
        expired = self.pending.expire_overdue({DirectUpload: self}, now=now, limit=limit)
        return [record.media_id for record in expired]

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

    def _verify(self, record: MediaRecord, payload: Any) -> Checked:
        """What S3 holds, checked against the promise (as promised: the object is complete)."""
        upload = self._upload(record)
        source, head = record.s3_key, None
        if upload.method == "multipart":
            reason = self._verify_parts(record, payload)
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
                metadata=self._object_metadata(record),
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
            sniffed = checked_type(
                first_bytes, self.settings.allowed_types, name=record.original_name
            )
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
        promised = self._upload(record).promised_sha256
        etag = head.etag or None
        if promised and self.settings.s3_verifies_sha256:
            reported = self.direct.reported_sha256(key, if_match=etag)
            if reported is not None:
                if reported != promised:
                    return Checked(SHA256_DIFFERS)
                return Checked(None, promised, Sha256State.VERIFIED)
        if not promised and self.settings.processing:
            return Checked(None)
        actual = self.direct.sha256(key, if_match=etag)
        if not promised:
            return Checked(None, actual, Sha256State.COMPUTED)
        if actual != promised:
            return Checked(SHA256_DIFFERS)
        return Checked(None, actual, Sha256State.VERIFIED)

    def _verify_parts(self, record: MediaRecord, payload: Any) -> str | None:
        upload = self._upload(record)
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
        claimed = payload.get("parts") if isinstance(payload, dict) else None
        if not isinstance(claimed, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("partNumber"), int)
            and not isinstance(p.get("partNumber"), bool)
            and isinstance(p.get("etag"), str)
            for p in claimed
        ):
            raise errors.InvalidParts()
        expected = list(range(1, upload.part_count + 1))
        if [p.number for p in held] != expected:
            return (
                f"S3 holds parts {[p.number for p in held]}; "
                f"parts 1-{upload.part_count} were expected."
            )
        if sorted((p["partNumber"], p["etag"].strip('"')) for p in claimed) != [
            (p.number, p.etag) for p in held
        ]:
            return "The parts and ETags sent do not match what S3 received."
        total = sum(p.size for p in held)
        if total != record.size:
            return f"S3 holds {total} bytes; {record.size} were promised."
        if any(p.size != upload.part_size for p in held[:-1]):
            return "A part other than the last is not the agreed part size."
        self.direct.complete_multipart(record.s3_key, upload.s3_upload_id, held)
        return None

    def _finish(self, record: MediaRecord, status: Status, reason: str) -> MediaRecord:
        """End the upload (gateway/uploads/pending.py); a lost race answers what the winner
        decided."""
        final = self.pending.end(record, status, reason, self)
        return final if final is not None else self._after_race(record, remove=False)

    def remove_parts(self, record: MediaRecord) -> None:
        """What S3 holds for the upload (the ``PartsRemover`` of direct uploads)."""
        upload = self._upload(record)
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
