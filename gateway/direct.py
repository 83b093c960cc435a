"""Direct-to-S3 uploads: permission, then verification of what S3 really received.

initiate: per promised file (name, type, size, optional SHA-256) a ``pending`` media record
and presigned URLs (one PUT/POST at or under the threshold, multipart parts above it).
complete: the gateway checks S3 itself — the parts or the object, the total size, the type
its first bytes sniff as, the checksum when promised — and only then marks the record
``stored``; anything else is removed from S3 and the record marked ``rejected``.

A single PUT/POST URL stays valid until ``expiresAt``, so it never targets the final key: it
writes the staging key (final key + ``.upload``), and ``complete`` copies exactly the version
it checked (IfMatch / CopySourceIfMatch on its ETag) to the final key. Whatever the client
sends later lands in the staging key only, which the sweeper removes. Multipart part URLs are
bound to an S3 upload id that completing ends, so multipart uploads target the final key.
No Flask in here.
"""
from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import filetype

from . import errors
from .auth import Principal
from .config import Settings
from .naming import check_project_id, display_name, media_id_of_key, new_media_id, object_key
from .records import MediaRecord, RecordStore
from .sniff import SNIFF_BYTES, SniffedType, is_allowed, sniff
from .storage.s3_direct import ObjectHead, PartInfo, S3DirectUploads
from .uploads import SHA256_RE

log = logging.getLogger(__name__)
STAGING_SUFFIX = ".upload"


def staging_key(key: str) -> str:
    """Where a single PUT/POST writes; ``complete`` copies it to ``key`` once checked."""
    return key + STAGING_SUFFIX


def parse_key(key: str) -> tuple[str | None, bool]:
    """(media id, whether it is a staging key) of a gateway-made key; (None, False) otherwise."""
    if key.endswith(STAGING_SUFFIX):
        media_id = media_id_of_key(key[: -len(STAGING_SUFFIX)])
        return (media_id, True) if media_id else (None, False)
    return media_id_of_key(key), False


@dataclass(frozen=True)
class Promise:
    filename: str
    content_type: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Initiated:
    record: MediaRecord
    instructions: dict[str, Any]  # how the client sends the bytes (URLs, fields, headers)


class DirectUploadService:
    def __init__(self, settings: Settings, direct: S3DirectUploads | None, records: RecordStore,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.settings = settings
        self.direct = direct
        self.records = records
        self.clock = clock

    def _require_s3(self) -> S3DirectUploads:
        if self.direct is None:
            raise errors.GatewayError("Direct uploads need S3 storage (GATEWAY_STORAGE_URL=s3://...).",
                                      code="direct_uploads_unavailable", status=501)
        return self.direct

    # -- initiate ----------------------------------------------------------------------------------
    def parse_promises(self, payload: Any) -> tuple[str, list[Promise]]:
        if not isinstance(payload, dict):
            raise errors.BadRequest("The body must be a JSON object.", code="invalid_json")
        project_id = payload.get("projectId")
        if not isinstance(project_id, str):
            raise errors.BadRequest("projectId is required.", code="missing_project_id")
        files = payload.get("files")
        cap = self.settings.direct_max_files
        if not isinstance(files, list) or not files:
            raise errors.BadRequest("files must be a non-empty list.", code="invalid_files")
        if len(files) > cap:
            raise errors.TooLarge(f"At most {cap} files per batch.", code="form_limit")
        return check_project_id(project_id), [self._promise(f) for f in files]

    def _promise(self, item: Any) -> Promise:
        if not isinstance(item, dict):
            raise errors.BadRequest("Each file must be an object.", code="invalid_files")
        filename, content_type = item.get("filename", ""), item.get("contentType")
        size, sha256 = item.get("size"), item.get("sha256")
        if not isinstance(filename, str):
            raise errors.BadRequest("filename must be a string.", code="invalid_files")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise errors.Unprocessable("size must be a positive integer (empty files are refused).",
                                       code="invalid_size")
        if size > self.settings.direct_max_bytes:
            raise errors.TooLarge(f"{size} bytes is over the limit of {self.settings.direct_max_bytes}.")
        if (not isinstance(content_type, str) or filetype.get_type(mime=content_type) is None
                or not is_allowed(content_type, self.settings.allowed_types)):
            raise errors.UnsupportedType(f"contentType {content_type!r} is not allowed; allowed: "
                                         f"{', '.join(self.settings.allowed_types)}.")
        if sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
            raise errors.BadRequest("sha256 must be 64 lowercase hexadecimal characters.",
                                    code="invalid_sha256")
        return Promise(display_name(filename, max_chars=self.settings.max_filename_chars),
                       content_type, size, sha256)

    def initiate(self, principal: Principal, project_id: str,
                 promises: list[Promise]) -> list[Initiated]:
        direct = self._require_s3()
        principal.check_project(project_id)
        now = self.clock()
        expires_at = (now + timedelta(seconds=self.settings.direct_url_ttl)).isoformat(
            timespec="seconds")
        started: list[Initiated] = []
        try:
            for promise in promises:
                started.append(self._start(direct, principal, project_id, promise, now, expires_at))
            self.records.create_many([i.record for i in started])
        except BaseException:
            for item in started:  # nothing of a refused batch stays
                if item.record.upload.get("s3UploadId"):
                    try:
                        direct.abort_multipart(item.record.s3_key, item.record.upload["s3UploadId"])
                    except errors.GatewayError:
                        log.warning("could not abort %s; the sweeper will", item.record.s3_key)
            raise
        return started

    def _start(self, direct: S3DirectUploads, principal: Principal, project_id: str,
               promise: Promise, now: datetime, expires_at: str) -> Initiated:
        media_id = new_media_id()
        extension = "." + filetype.get_type(mime=promise.content_type).extension
        key = object_key(tenant=principal.tenant, project_id=project_id, media_id=media_id,
                         extension=extension)
        ttl = self.settings.direct_url_ttl
        upload: dict[str, Any] = {"expiresAt": expires_at}
        if promise.size <= self.settings.direct_single_put_max:
            sha_b64 = (base64.b64encode(binascii.unhexlify(promise.sha256)).decode()
                       if promise.sha256 else None)
            upload["method"] = "put"
            staging = staging_key(key)
            instructions = {
                "method": "put",
                "put": direct.presign_put(staging, content_type=promise.content_type,
                                          size=promise.size, sha256_b64=sha_b64, expires_in=ttl),
                "post": direct.presign_post(staging, content_type=promise.content_type,
                                            size=promise.size, expires_in=ttl)}
        else:
            part_size = self.settings.direct_part_size_for(promise.size)
            count = -(-promise.size // part_size)
            s3_upload_id = direct.start_multipart(
                key, content_type=promise.content_type,
                metadata={"media-id": media_id, "project-id": project_id})
            upload.update(method="multipart", s3UploadId=s3_upload_id, partSize=part_size,
                          partCount=count)
            sizes = [part_size] * (count - 1) + [promise.size - part_size * (count - 1)]
            instructions = {"method": "multipart", "multipart": {
                "partSize": part_size, "partCount": count,
                "parts": direct.presign_parts(key, s3_upload_id, sizes, ttl)}}
        if promise.sha256:
            upload["promisedSha256"] = promise.sha256
        record = MediaRecord(
            media_id=media_id, project_id=project_id, tenant=principal.tenant,
            owner=principal.subject, original_name=promise.filename,
            file_type=SniffedType(promise.content_type, extension).file_type,
            mime_type=promise.content_type, s3_key=key, size=promise.size, sha256="",
            created_at=now.isoformat(timespec="microseconds"), status="pending", upload=upload)
        return Initiated(record, {**instructions, "expiresAt": expires_at})

    # -- the upload's life --------------------------------------------------------------------------
    def get(self, principal: Principal, upload_id: str) -> MediaRecord:
        """The caller's own direct upload, in a project its token may use (others' are 404, as if
        they did not exist)."""
        try:
            record = self.records.get(upload_id)
        except errors.RecordNotFound:
            raise errors.NotFound("No such upload.", code="upload_not_found") from None
        if (not record.upload or record.owner != principal.subject
                or not principal.may_see(record.tenant, record.project_id)):
            raise errors.NotFound("No such upload.", code="upload_not_found")
        return record

    def received(self, record: MediaRecord) -> list[PartInfo]:
        """Parts S3 holds so far for a pending multipart upload."""
        if record.status != "pending" or record.upload.get("method") != "multipart":
            return []
        return self._require_s3().list_parts(record.s3_key, record.upload["s3UploadId"]) or []

    def complete(self, principal: Principal, upload_id: str, payload: Any) -> MediaRecord:
        """Verify and commit; returns the record, ``stored`` or ``rejected`` (same on a repeat)."""
        direct = self._require_s3()
        record = self.get(principal, upload_id)
        if record.status in ("stored", "rejected"):
            return record
        self._require_pending(record)
        if self._expired(record):
            self._finish(direct, record, "expired", "The upload expired before it was completed.")
            raise errors.Conflict("The upload has expired.", code="upload_expired")
        try:
            reason = self._verify(direct, record, payload)
        except errors.Conflict as exc:
            if exc.code != "upload_changed":
                raise
            current = self.records.get(record.media_id)  # a concurrent complete won?
            if current.status in ("stored", "rejected"):
                return current
            raise
        if reason is not None:
            return self._finish(direct, record, "rejected", reason)
        stored = record.evolve(status="stored", sha256=record.upload.get("promisedSha256", ""),
                               upload={**record.upload, "completedAt": self.clock().isoformat(
                                   timespec="seconds")})
        if not self.records.replace(stored, expected_status="pending"):
            # Aborted or expired while we verified: the object we completed must not stay.
            return self._after_race(direct, record, remove=True)
        return stored

    def abort(self, principal: Principal, upload_id: str) -> MediaRecord:
        direct = self._require_s3()
        record = self.get(principal, upload_id)
        if record.status == "aborted":
            return record
        self._require_pending(record)
        return self._finish(direct, record, "aborted", "Aborted by the client.")

    def expire_overdue(self, *, now: datetime | None = None, limit: int = 500) -> list[str]:
        """The sweeper's part: pending uploads past their expiry are cleaned up and expired."""
        direct = self._require_s3()
        stamp = (now or self.clock()).isoformat(timespec="seconds")
        done = []
        for record in self.records.expired_pending(now=stamp, limit=limit):
            self._finish(direct, record, "expired", "The upload expired before it was completed.")
            done.append(record.media_id)
        return done

    # -- internals -----------------------------------------------------------------------------------
    def _require_pending(self, record: MediaRecord) -> None:
        if record.status != "pending":
            raise errors.Conflict(f"The upload is {record.status}.", code=f"upload_{record.status}")

    def _expired(self, record: MediaRecord) -> bool:
        return record.upload["expiresAt"] < self.clock().isoformat(timespec="seconds")

    def _verify(self, direct: S3DirectUploads, record: MediaRecord, payload: Any) -> str | None:
        """None when S3 holds exactly what was promised (then the object is complete), else why not."""
        upload = record.upload
        source, head = record.s3_key, None
        if upload["method"] == "multipart":
            reason = self._verify_parts(direct, record, payload)
            if reason is not None:
                return reason
        else:
            source = staging_key(record.s3_key)
            head = direct.head(source)
            if head is None:
                # An earlier complete copied the bytes and failed before the record said so:
                # only the gateway writes the final key, so go on from there.
                source = record.s3_key
        head = head or direct.head(source)
        if head is None:
            raise errors.Conflict("Nothing has been uploaded yet.", code="upload_incomplete")
        reason = self._check_object(direct, record, source, head)
        if reason is None and source != record.s3_key:
            direct.copy(source, record.s3_key, if_match=head.etag)
            try:
                direct.delete(source)
            except errors.GatewayError:  # the record is stored soon: the sweeper removes it
                log.warning("could not delete %s; the sweeper will", source, exc_info=True)
        return reason

    def _check_object(self, direct: S3DirectUploads, record: MediaRecord, key: str,
                      head: ObjectHead) -> str | None:
        """Check the object version ``head`` describes (every read is IfMatch its ETag)."""
        if head.size != record.size:
            return f"S3 holds {head.size} bytes; {record.size} were promised."
        sniffed = sniff(direct.read_head(key, min(SNIFF_BYTES, record.size),
                                         if_match=head.etag or None))
        if sniffed is None or sniffed.mime != record.mime_type:
            found = sniffed.mime if sniffed else "unrecognized content"
            return f"The content is {found}; {record.mime_type} was promised."
        if not is_allowed(sniffed.mime, self.settings.allowed_types):
            return f"The content type {sniffed.mime} is not allowed."
        promised = record.upload.get("promisedSha256")
        if promised and direct.sha256(key, if_match=head.etag or None) != promised:
            return "The SHA-256 of what S3 holds differs from the one promised."
        return None

    def _verify_parts(self, direct: S3DirectUploads, record: MediaRecord,
                      payload: Any) -> str | None:
        upload = record.upload
        claimed = payload.get("parts") if isinstance(payload, dict) else None
        if not isinstance(claimed, list) or not all(
                isinstance(p, dict) and isinstance(p.get("partNumber"), int)
                and isinstance(p.get("etag"), str) for p in claimed):
            raise errors.BadRequest("parts must be a list of {partNumber, etag}.",
                                    code="invalid_parts")
        held = direct.list_parts(record.s3_key, upload["s3UploadId"])
        if held is None:
            # Gone: either aborted, or completed by an earlier complete (or a concurrent one)
            # that failed before the record said so. The object decides; its checks follow.
            if direct.head(record.s3_key) is not None:
                return None
            raise errors.Conflict("The multipart upload no longer exists.", code="upload_aborted")
        expected = list(range(1, upload["partCount"] + 1))
        if [p.number for p in held] != expected:
            return (f"S3 holds parts {[p.number for p in held]}; "
                    f"parts 1-{upload['partCount']} were expected.")
        if sorted((p["partNumber"], p["etag"].strip('"')) for p in claimed) != \
                [(p.number, p.etag) for p in held]:
            return "The parts and ETags sent do not match what S3 received."
        total = sum(p.size for p in held)
        if total != record.size:
            return f"S3 holds {total} bytes; {record.size} were promised."
        if any(p.size != upload["partSize"] for p in held[:-1]):
            return "A part other than the last is not the agreed part size."
        direct.complete_multipart(record.s3_key, upload["s3UploadId"], held)
        return None

    def _finish(self, direct: S3DirectUploads, record: MediaRecord, status: str,
                reason: str) -> MediaRecord:
        """Record the final status first (so a racing complete cannot store it), then remove
        whatever S3 holds for the upload."""
        final = record.evolve(status=status, upload={**record.upload, "reason": reason})
        if not self.records.replace(final, expected_status="pending"):
            return self._after_race(direct, record, remove=False)
        self._remove(direct, record)
        return final

    def _remove(self, direct: S3DirectUploads, record: MediaRecord) -> None:
        try:
            if record.upload.get("method") == "multipart":
                direct.abort_multipart(record.s3_key, record.upload["s3UploadId"])
            else:
                direct.delete(staging_key(record.s3_key))  # what the PUT/POST URL wrote
            direct.delete(record.s3_key)  # a copied single upload, or a completed multipart
        except errors.GatewayError:
            # The record no longer says pending or stored, so the sweeper removes these.
            log.warning("could not remove %s from S3; the sweeper will", record.s3_key,
                        exc_info=True)

    def _after_race(self, direct: S3DirectUploads, record: MediaRecord, *,
                    remove: bool) -> MediaRecord:
        """Another request moved the record first: answer with what it decided."""
        current = self.records.get(record.media_id)
        if current.status in ("stored", "rejected"):
            return current
        if remove:
            self._remove(direct, record)
        raise errors.Conflict(f"The upload is {current.status}.", code=f"upload_{current.status}")
