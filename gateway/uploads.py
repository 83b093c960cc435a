"""The streaming upload service: body bytes -> form events -> object writers -> media records.

All or nothing: objects are committed only after the closing boundary has been seen and the
byte count matches, then all records are written in one atomic call. Any failure on the way
aborts every open writer and deletes every object this request committed; an object that
cannot be deleted goes to the orphan journal for the sweeper. No Flask in here.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Callable
from urllib.parse import quote

from werkzeug.exceptions import ClientDisconnected as WerkzeugDisconnected

from . import errors
from .auth import Principal
from .config import Settings
from .formdata import (FileData, FileEnd, FileStart, FormDataError, FormDataParser, FormLimits,
                       TextField, boundary_from_content_type)
from .naming import check_project_id, content_disposition, display_name, new_media_id, object_key
from .orphans import OrphanJournal
from .records import MediaRecord, RecordStore
from .sniff import SNIFF_BYTES, is_allowed, sniff
from .storage import ObjectStore, ObjectWriter

log = logging.getLogger(__name__)
FILE_FIELDS = ("file", "files")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class UploadRequest:
    principal: Principal
    content_type: str | None
    content_length: int | None  # None: chunked
    query_project_id: str | None = None


@dataclass
class UploadStats:
    """Filled in as the upload runs, for the request log (also on failure)."""

    bytes_received: int = 0
    files: int = 0
    project_id: str | None = None


@dataclass
class _IncomingFile:
    media_id: str
    original_name: str
    head: bytearray = field(default_factory=bytearray)
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    size: int = 0
    expected_sha256: str | None = None
    unselected: bool = False  # sent with filename="" (maybe an empty file input)
    writer: ObjectWriter | None = None
    mime: str = ""
    file_type: str = ""
    commit_started: bool = False

    @property
    def key(self) -> str:
        assert self.writer is not None
        return self.writer.key


class UploadService:
    def __init__(self, settings: Settings, store: ObjectStore, records: RecordStore,
                 journal: OrphanJournal,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.settings = settings
        self.store = store
        self.records = records
        self.journal = journal
        self.clock = clock
        self.limits = FormLimits(max_files=settings.max_files, max_fields=settings.max_fields,
                                 max_field_bytes=settings.max_field_bytes,
                                 max_part_header_bytes=settings.max_part_header_bytes)

    def precheck(self, request: UploadRequest) -> bytes:
        """Everything decidable from headers alone, before the body is read or S3 is called."""
        length, cap = request.content_length, self.settings.max_upload_bytes
        if length is not None and length > cap:
            raise errors.TooLarge(f"The body is {length} bytes; the limit is {cap}.")
        if request.query_project_id is not None:
            request.principal.check_project(check_project_id(request.query_project_id))
        try:
            return boundary_from_content_type(request.content_type)
        except FormDataError as exc:
            raise errors.MalformedBody(str(exc), code="bad_content_type") from None

    def ingest(self, stream: BinaryIO, request: UploadRequest, *, boundary: bytes,
               stats: UploadStats | None = None) -> list[MediaRecord]:
        """Stream the body into objects and records; ``boundary`` comes from ``precheck``."""
        batch = _Batch(self, request, stats or UploadStats())
        try:
            self._consume(stream, FormDataParser(boundary, self.limits), batch, request)
            return batch.commit()
        except BaseException:
            batch.rollback()
            raise

    def _consume(self, stream: BinaryIO, parser: FormDataParser, batch: "_Batch",
                 request: UploadRequest) -> None:
        cap, read_size = self.settings.max_upload_bytes, self.settings.read_size
        received = 0
        try:
            while True:
                chunk = _read(stream, read_size)
                if not chunk:
                    break
                received += len(chunk)
                batch.stats.bytes_received = received
                if received > cap:
                    raise errors.TooLarge(f"The body grew past the limit of {cap} bytes.")
                for event in parser.feed(chunk):
                    batch.handle(event)
            if request.content_length is not None and received != request.content_length:
                raise errors.ClientDisconnected(
                    f"Received {received} of {request.content_length} bytes.")
            for event in parser.finish():
                batch.handle(event)
        except FormDataError as exc:
            if exc.limit:
                raise errors.TooLarge(str(exc), code="form_limit") from None
            raise errors.MalformedBody(str(exc)) from None


def _read(stream: BinaryIO, size: int) -> bytes:
    try:
        return stream.read(size)
    except WerkzeugDisconnected:
        raise errors.ClientDisconnected() from None
    except Exception as exc:  # the server's body reader: bad chunk framing, socket closed...
        raise errors.ClientDisconnected(f"The body could not be read ({type(exc).__name__}).") \
            from None


class _Batch:
    """The files of one request, from first byte to commit or rollback."""

    def __init__(self, service: UploadService, request: UploadRequest, stats: UploadStats) -> None:
        self.service = service
        self.settings = service.settings
        self.request = request
        self.stats = stats
        self.project_id: str | None = None
        self.field_project_id: str | None = None
        self.metadata: dict[str, str] = {}
        self.next_sha256: str | None = None
        self.files: list[_IncomingFile] = []
        self.current: _IncomingFile | None = None
        self.records: list[MediaRecord] = []  # written, or maybe written, by a failed commit

    # -- events --------------------------------------------------------------------------------
    def handle(self, event) -> None:
        if isinstance(event, FileData):
            self._on_data(event.data)
        elif isinstance(event, TextField):
            self._on_field(event)
        elif isinstance(event, FileStart):
            self._on_file_start(event)
        elif isinstance(event, FileEnd):
            self._on_file_end(event.last)

    def _on_field(self, event: TextField) -> None:
        if event.name == "projectId":
            if self.project_id is not None and event.value != self.project_id:
                raise errors.BadRequest("projectId cannot change after the first file.",
                                        code="invalid_project_id")
            self.field_project_id = event.value
        elif event.name == "sha256":
            value = event.value.strip().lower()
            if not SHA256_RE.match(value):
                raise errors.BadRequest("sha256 must be 64 hexadecimal characters.",
                                        code="invalid_sha256")
            self.next_sha256 = value
        elif event.name:
            self.metadata[event.name[:64]] = event.value

    def _resolve_project(self) -> str:
        if self.project_id is None:
            query, form = self.request.query_project_id, self.field_project_id
            if query is not None and form is not None and query != form:
                raise errors.BadRequest("projectId differs between the query and the form.",
                                        code="invalid_project_id")
            project_id = form if form is not None else query
            if project_id is None:
                raise errors.BadRequest(
                    "projectId is required, in the query string or as a field before the files.",
                    code="missing_project_id")
            self.request.principal.check_project(check_project_id(project_id))
            self.project_id = self.stats.project_id = project_id
        return self.project_id

    def _on_file_start(self, event: FileStart) -> None:
        if event.name not in FILE_FIELDS:
            raise errors.BadRequest(f"File parts must be named 'file' or 'files', not {event.name!r}.",
                                    code="unexpected_file_field")
        self._resolve_project()
        self.current = _IncomingFile(
            media_id=new_media_id(),
            original_name=display_name(event.filename, max_chars=self.settings.max_filename_chars),
            expected_sha256=self.next_sha256, unselected=event.filename == "")
        self.next_sha256 = None
        self.files.append(self.current)
        self.stats.files = len(self.files)

    def _on_data(self, data: bytes) -> None:
        incoming = self.current
        assert incoming is not None
        incoming.size += len(data)
        incoming.hasher.update(data)
        if incoming.writer is not None:
            incoming.writer.write(data)
            return
        incoming.head += data
        if len(incoming.head) >= SNIFF_BYTES:
            self._open_writer(incoming)

    def _on_file_end(self, last: bool) -> None:
        incoming = self.current
        assert incoming is not None
        self.current = None
        if incoming.size == 0 and incoming.unselected:
            self.files.remove(incoming)  # a form's file input left empty: no file at all
            self.stats.files = len(self.files)
            return
        if incoming.size == 0:
            raise errors.Unprocessable("Empty files are not accepted.", code="empty_file")
        if incoming.writer is None:
            self._open_writer(incoming)
        digest = incoming.hasher.hexdigest()
        if incoming.expected_sha256 and incoming.expected_sha256 != digest:
            raise errors.Unprocessable("The file's SHA-256 does not match the sha256 field.",
                                       code="checksum_mismatch")
        if not last:
            incoming.writer.spill()

    def _open_writer(self, incoming: _IncomingFile) -> None:
        head = bytes(incoming.head)
        sniffed = sniff(head)
        if sniffed is None or not is_allowed(sniffed.mime, self.settings.allowed_types):
            what = sniffed.mime if sniffed else "unrecognized content"
            raise errors.UnsupportedType(
                f"File {incoming.original_name!r} is {what}; allowed: "
                f"{', '.join(self.settings.allowed_types)}.")
        incoming.mime, incoming.file_type = sniffed.mime, sniffed.file_type
        key = object_key(tenant=self.request.principal.tenant, project_id=self._resolve_project(),
                         media_id=incoming.media_id, extension=sniffed.extension)
        metadata = {"media-id": incoming.media_id, "project-id": self.project_id,
                    "owner": quote(self.request.principal.subject, safe=""),
                    "original-name": quote(incoming.original_name, safe="")}
        if incoming.expected_sha256:
            metadata["sha256"] = incoming.expected_sha256
        incoming.writer = self.service.store.open_writer(
            key, content_type=sniffed.mime, metadata=metadata,
            content_disposition=content_disposition(incoming.original_name))
        incoming.head = bytearray()
        incoming.writer.write(head)

    # -- ending --------------------------------------------------------------------------------
    def commit(self) -> list[MediaRecord]:
        if not self.files:
            raise errors.BadRequest("The form has no file part ('file' or 'files').",
                                    code="no_file")
        if self.next_sha256 is not None:
            raise errors.BadRequest("A sha256 field must come before the file it describes.",
                                    code="invalid_sha256")
        for incoming in self.files:
            incoming.commit_started = True
            incoming.writer.commit(sha256=incoming.hasher.hexdigest())
        created_at = self.service.clock().isoformat(timespec="microseconds")
        principal = self.request.principal
        records = [MediaRecord(
            media_id=f.media_id, project_id=self.project_id, tenant=principal.tenant,
            owner=principal.subject, original_name=f.original_name, file_type=f.file_type,
            mime_type=f.mime, s3_key=f.key, size=f.size, sha256=f.hasher.hexdigest(),
            created_at=created_at, metadata=dict(self.metadata)) for f in self.files]
        try:
            self.service.records.create_many(records)
        except errors.RecordExists as exc:
            # A retried write whose first answer was lost finds its own records: that is
            # success. Anything else would be a foreign record (never delete those).
            if not all(self._is_stored(record) for record in records):
                raise errors.RecordStoreError() from exc
        except errors.GatewayError as exc:
            self.records = records  # the write may have applied with its answer lost
            raise errors.RecordStoreError() from exc
        return records

    def _is_stored(self, record: MediaRecord) -> bool:
        try:
            return self.service.records.get(record.media_id) == record
        except errors.GatewayError:
            return False

    def rollback(self) -> None:
        """Undo everything; each step on its own, so one failure cannot stop the others."""
        kept: set[str] = set()  # media whose record may still exist: keep object, journal it
        for record in self.records:
            try:
                self.service.records.delete(record.media_id)
            except Exception:
                log.error("rollback could not delete record %s", record.media_id, exc_info=True)
                kept.add(record.media_id)
        for incoming in self.files:
            if incoming.writer is None:
                continue
            try:
                incoming.writer.abort()  # a no-op once committed
            except Exception:
                log.error("rollback could not abort %s", incoming.key, exc_info=True)
            if not incoming.commit_started:
                continue
            # Committed, or its commit failed with an unknown outcome: delete it, unless its
            # record may exist (then the sweeper decides, once the record store answers).
            if incoming.media_id not in kept:
                try:
                    self.service.store.delete(incoming.key)
                    continue
                except Exception:
                    log.error("rollback could not delete %s", incoming.key, exc_info=True)
            try:
                self.service.journal.add(incoming.key, "rollback incomplete")
            except Exception:
                log.critical("could not journal %s for the sweeper", incoming.key, exc_info=True)
