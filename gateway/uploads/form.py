"""The streaming form upload: body bytes -> form events -> per-file ingest -> media records.

All or nothing: objects are committed only after the closing boundary has been seen and the
byte count matches, then all records are written in one atomic call (with the idempotent answer,
when there is one) and ``media.stored`` is announced. Any failure on the way aborts every open
writer and deletes every object this request committed; an object that cannot be deleted goes
to the orphan journal for the sweeper. No Flask in here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import errors
from gateway.media.events import Announcer, EventType
from gateway.media.naming import check_project_id, display_name, new_media_id
from gateway.media.orphans import OrphanJournal
from gateway.media.principal import Principal
from gateway.media.records import IdempotentAnswer, MediaRecord, MediaStore
from gateway.storage import ObjectStore
from gateway.uploads import csrf, tickets
from gateway.uploads.formdata import (
    Event,
    FileData,
    FileEnd,
    FileStart,
    FormDataError,
    FormDataParser,
    FormLimits,
    TextField,
    boundary_from_content_type,
)
from gateway.uploads.idempotency import AnswerPlan, Fingerprint
from gateway.uploads.ingest import BodyReader, Destination, IncomingFile
from gateway.uploads.redirects import check_redirect
from gateway.uploads.tickets import Ticket

log = logging.getLogger(__name__)
FILE_FIELDS = ("file", "files")
REDIRECT_FIELD = "redirect"  # a browser form's: where to send the browser afterwards
OPENING_FIELDS = (tickets.FORM_FIELD, REDIRECT_FIELD)
UNRECORDED_FIELDS = (csrf.FORM_FIELD, tickets.FORM_FIELD)  # never metadata nor fingerprinted
SHA256_RE = re.compile(r"[0-9a-f]{64}")
METADATA_NAME_CHARS = 64


@dataclass(frozen=True)
class UploadRequest:
    principal: Principal
    content_type: str | None
    content_length: int | None  # None: chunked
    query_project_id: str | None = None
    # A cookie session's CSRF token that the form must carry in its csrf_token field, before
    # any file part (None: a bearer token, or the X-CSRF-TOKEN header was checked already).
    csrf_token: str | None = None
    # An upload ticket's post (gateway/uploads/tickets.py): its project, fields and limits.
    ticket: Ticket | None = None


@dataclass
class UploadStats:
    """Filled in as the upload runs, for the request log (also on failure)."""

    bytes_received: int = 0
    files: int = 0
    project_id: str | None = None
    redirect: str | None = None  # the form's checked redirect field
    by_ticket: bool = False  # the post carries an upload ticket (its form is on another site)


@dataclass(frozen=True)
class Stored:
    records: list[MediaRecord]
    status: int  # the saved idempotent answer's, when there is one
    body: dict[str, Any]


@dataclass(frozen=True)
class Opening:
    """What a form sends before its first file part, within ``csrf.FORM_WINDOW_BYTES``: its
    ``ticket`` and ``redirect`` fields; ``body`` is the whole body again, these bytes first."""

    ticket: str | None
    redirect: str | None
    body: BodyReader


class Replay:
    """A body whose first bytes were read already: those again, then the rest."""

    def __init__(self, head: bytes, rest: BodyReader) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, size: int) -> bytes | bytearray:
        if self._head:
            chunk, self._head = self._head[:size], self._head[size:]
            return bytes(chunk)
        return self._rest.read(size)


@dataclass(frozen=True)
class FormOptions:
    """The settings a form upload reads (built once, in ``Services.from_settings``)."""

    limits: FormLimits
    max_upload_bytes: int
    read_size: int
    allowed_types: tuple[str, ...]
    max_filename_chars: int
    redirect_origins: tuple[str, ...]
    reservation_seconds: float
    quotas: bool  # whether any quota is set (else nothing is reserved)


class UploadService:
    def __init__(
        self,
        options: FormOptions,
        store: ObjectStore,
        records: MediaStore,
        journal: OrphanJournal,
        announcer: Announcer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        quarantined: bool = False,
    ) -> None:
        self.options = options
        self.store = store  # where new objects land: the quarantine while scanning is on
        self.quarantined = quarantined
        self.records = records
        self.journal = journal
        self.announcer = announcer
        self.clock = clock

    def precheck(self, request: UploadRequest) -> bytes:
        """Everything decidable from headers alone, before the body is read or S3 is called."""
        length, cap = request.content_length, self.options.max_upload_bytes
        if length is not None and length > cap:
            raise errors.TooLarge(f"The body is {length} bytes; the limit is {cap}.")
        if request.query_project_id is not None:
            project_id = check_project_id(request.query_project_id)
            if request.ticket is not None:
                request.ticket.check_project(project_id)
            request.principal.check_project(project_id)
        try:
            return boundary_from_content_type(request.content_type)
        except FormDataError as exc:
            raise errors.BadContentType(str(exc)) from None

    def opening(self, body: BodyReader, boundary: bytes) -> Opening:
        """Read the form's fields before its first file (at most ``csrf.FORM_WINDOW_BYTES``) for
        an upload ticket: a post may carry one instead of a token. Nothing is checked here (a
        malformed body or a limit is answered when the body is read again)."""
        parser = FormDataParser(boundary, self.options.limits)
        head = bytearray()
        found: dict[str, str] = {}
        files = False
        try:
            while not files and len(head) < csrf.FORM_WINDOW_BYTES:
                chunk = body.read(csrf.FORM_WINDOW_BYTES - len(head))
                if not chunk:
                    break
                head += chunk
                for event in parser.feed(chunk):
                    files = files or isinstance(event, FileStart)
                    if not files and isinstance(event, TextField) and event.name in OPENING_FIELDS:
                        found.setdefault(event.name, event.value)
        except FormDataError:
            pass
        return Opening(
            found.get(tickets.FORM_FIELD), found.get(REDIRECT_FIELD), Replay(bytes(head), body)
        )

    def ingest(
        self,
        body: BodyReader,
        request: UploadRequest,
        *,
        boundary: bytes,
        stats: UploadStats | None = None,
        answer: AnswerPlan | None = None,
    ) -> Stored:
        """Stream the body into objects and records; ``boundary`` comes from ``precheck``."""
        batch = _Batch(self, request, stats or UploadStats())
        try:
            for event in self._events(body, request, boundary, batch.stats):
                batch.handle(event)
                del event  # its bytes are a view of the last read: not kept while the next waits
            return batch.commit(answer)
        except BaseException:
            batch.rollback()
            raise

    def fingerprint(self, body: BodyReader, request: UploadRequest, *, boundary: bytes) -> str:
        """The idempotency fingerprint of a retried request: its body read and hashed, nothing
        stored (the same fields and files give the same fingerprint as the first request)."""
        fingerprint = Fingerprint(request.query_project_id)
        file: tuple[str, str, Any] | None = None  # field name, filename, its hasher
        for event in self._events(body, request, boundary, UploadStats()):
            if isinstance(event, FileData):
                assert file is not None
                file[2].update(event.data)
            elif isinstance(event, TextField) and event.name not in UNRECORDED_FIELDS:
                fingerprint.field(event.name, event.value)
            elif isinstance(event, FileStart):
                file = (event.name, event.filename, hashlib.sha256())
            elif isinstance(event, FileEnd):
                assert file is not None
                fingerprint.file(file[0], file[1], file[2].hexdigest())
        return fingerprint.hexdigest()

    def _events(
        self, body: BodyReader, request: UploadRequest, boundary: bytes, stats: UploadStats
    ) -> Iterator[Event]:
        """Parser events of the whole body: reads, caps the size, requires the exact length.
        A form that owes its CSRF token must send it before any file, within the first
        ``csrf.FORM_WINDOW_BYTES`` (no more is read until then); only such a form's events are
        looked at here, the rest go straight through."""
        parser = FormDataParser(boundary, self.options.limits)
        cap, read_size = self.options.max_upload_bytes, self.options.read_size
        owed = request.csrf_token

        def checked(events: list[Event]) -> list[Event]:
            nonlocal owed
            for event in events:
                if owed is None:
                    break
                if isinstance(event, TextField) and event.name == csrf.FORM_FIELD:
                    if not csrf.matches(owed, event.value):
                        raise errors.CsrfInvalid()
                    owed = None
                elif isinstance(event, FileStart):
                    raise errors.CsrfMissing()
            return events

        received = 0
        try:
            while True:
                chunk = body.read(read_size if owed is None else csrf.FORM_WINDOW_BYTES - received)
                if not chunk:
                    break
                received += len(chunk)
                stats.bytes_received = received
                if received > cap:
                    raise errors.TooLarge(f"The body grew past the limit of {cap} bytes.")
                events = parser.feed(chunk)
                del chunk
                yield from events if owed is None else checked(events)
                # The read's buffer is free before the next read waits for the client: a slow
                # upload holds none between its reads (docs/benchmarks.md, "Slow uploads, held").
                del events
                if owed is not None and received >= csrf.FORM_WINDOW_BYTES:
                    raise errors.CsrfMissing()
            expected = request.content_length
            if expected is not None and received != expected:
                raise errors.ClientDisconnected(f"Received {received} of {expected} bytes.")
            yield from checked(parser.finish())
            if owed is not None:
                raise errors.CsrfMissing()
        except FormDataError as exc:
            if exc.limit:
                raise errors.FormLimit(str(exc)) from None
            if exc.unsupported_encoding:
                raise errors.UnsupportedTransferEncoding(str(exc)) from None
            raise errors.MalformedBody(str(exc)) from None


class _Reservation:
    """What a streamed upload holds of its project's quota while its bytes arrive: its whole
    Content-Length from its first file part on (or, chunked, the file bytes that arrived, in
    ``CHUNKED_STEP`` steps), and a file per file part; renewed while the body is read, so that
    it outlives a long upload but not a process that died (see records/quota.py)."""

    CHUNKED_STEP = 1024 * 1024

    def __init__(self, service: UploadService, request: UploadRequest) -> None:
        self.records = service.records
        self.ttl = service.options.reservation_seconds
        self.active = service.options.quotas
        self.request = request
        self.id = "upload-" + new_media_id()
        self.bytes = 0
        self.renewed = 0.0
        self.started = False

    def _add(self, project_id: str, *, files: int, size: int) -> None:
        now = time.time()
        self.records.reserve(
            self.id,
            tenant=self.request.principal.tenant,
            project_id=project_id,
            files=files,
            bytes=size,
            expires_at=now + self.ttl,
        )
        self.started, self.renewed, self.bytes = True, now, self.bytes + size

    def file(self, project_id: str) -> None:
        """A file part begins: one more file; the first also reserves the Content-Length."""
        if not self.active:
            return
        length, ticket = self.request.content_length, self.request.ticket
        if length is not None and ticket is not None:
            length = min(length, ticket.max_bytes)  # never stores more, whatever its length
        self._add(project_id, files=1, size=0 if self.started or length is None else length)

    def data(self, project_id: str, file_bytes: int) -> None:
        """File bytes arrived (``file_bytes`` in all so far): a chunked body reserves them (a
        step at a time); any body renews its reservation now and then."""
        if not self.active or not self.started:
            return
        if file_bytes > self.bytes:
            step = self.CHUNKED_STEP
            self._add(project_id, files=0, size=-(-(file_bytes - self.bytes) // step) * step)
        elif time.time() - self.renewed > self.ttl / 3:
            self._add(project_id, files=0, size=0)

    def end(self) -> None:
        if self.started:
            self.records.end_reservation(self.id)


class _Batch:
    """The files of one request, from first byte to commit or rollback."""

    def __init__(self, service: UploadService, request: UploadRequest, stats: UploadStats) -> None:
        self.service = service
        self.options = service.options
        self.request = request
        self.stats = stats
        self.fingerprint = Fingerprint(request.query_project_id)
        self.destination: Destination | None = None
        self.field_project_id: str | None = None
        self.metadata: dict[str, str] = {}
        self.next_sha256: str | None = None
        self.files: list[IncomingFile] = []
        self.current: tuple[FileStart, IncomingFile] | None = None
        self.records: list[MediaRecord] = []  # written, or maybe written, by a failed commit
        self.reservation = _Reservation(service, request)
        self.file_bytes = 0
        self.ticket = request.ticket

    # -- events --------------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        if isinstance(event, FileData):
            assert self.current is not None
            self.file_bytes += len(event.data)
            if self.ticket is not None:
                self.ticket.check_bytes(self.current[1].size + len(event.data), self.file_bytes)
            assert self.destination is not None
            self.reservation.data(self.destination.project_id, self.file_bytes)
            self.current[1].write(event.data)
        elif isinstance(event, TextField):
            self._on_field(event)
        elif isinstance(event, FileStart):
            self._on_file_start(event)
        elif isinstance(event, FileEnd):
            self._on_file_end(event.last)

    def _on_field(self, event: TextField) -> None:
        if self.ticket is not None:
            self.ticket.check_field(event.name, event.value)
        if event.name in UNRECORDED_FIELDS:
            return  # checked by _events or by the view; never metadata
        self.fingerprint.field(event.name, event.value)
        if event.name == "projectId":
            if self.ticket is not None:
                self.ticket.check_project(event.value)
            if self.destination is not None and event.value != self.destination.project_id:
                raise errors.InvalidProjectId("projectId cannot change after the first file.")
            self.field_project_id = event.value
        elif event.name == REDIRECT_FIELD:
            if self.ticket is not None:
                self.stats.redirect = self.ticket.redirect_for(event.value)
            else:
                self.stats.redirect = check_redirect(event.value, self.options.redirect_origins)
        elif event.name == "sha256":
            value = event.value.strip().lower()
            if not SHA256_RE.fullmatch(value):
                raise errors.InvalidSha256()
            if self.next_sha256 is not None:
                raise errors.InvalidSha256("Two sha256 fields without a file between them.")
            self.next_sha256 = value
        elif event.name:
            self.metadata[event.name[:METADATA_NAME_CHARS]] = event.value

    def _resolve_destination(self) -> Destination:
        if self.destination is None:
            query, form = self.request.query_project_id, self.field_project_id
            if query is not None and form is not None and query != form:
                raise errors.InvalidProjectId("projectId differs between the query and the form.")
            project_id = form if form is not None else query
            if project_id is None and self.ticket is not None:
                project_id = self.ticket.project
            if project_id is None:
                raise errors.MissingProjectId(
                    "projectId is required, in the query string or as a field before the files."
                )
            self.request.principal.check_project(check_project_id(project_id))
            self.destination = Destination(
                self.request.principal, project_id, quarantined=self.service.quarantined
            )
            self.stats.project_id = project_id
        return self.destination

    def _on_file_start(self, event: FileStart) -> None:
        if event.name not in FILE_FIELDS:
            raise errors.UnexpectedFileField(
                f"File parts must be named 'file' or 'files', not {event.name!r}."
            )
        destination = self._resolve_destination()
        if self.ticket is not None and event.filename:  # an empty file input counts at its end
            self.ticket.check_files(len(self.files) + 1)
        self.reservation.file(destination.project_id)
        incoming = IncomingFile(
            store=self.service.store,
            destination=destination,
            allowed_types=self.options.allowed_types,
            also_allowed=self.ticket.types if self.ticket is not None else None,
            media_id=new_media_id(),
            original_name=display_name(event.filename, max_chars=self.options.max_filename_chars),
            expected_sha256=self.next_sha256,
        )
        self.next_sha256 = None
        self.current = (event, incoming)
        self.files.append(incoming)
        self.stats.files = len(self.files)

    def _on_file_end(self, last: bool) -> None:
        assert self.current is not None
        start, incoming = self.current
        self.current = None
        self.fingerprint.file(start.name, start.filename, incoming.sha256)
        if incoming.size == 0 and start.filename == "":
            # A form's file input left empty: no file at all; a sha256 sent before it still
            # waits for the next file.
            self.files.remove(incoming)
            self.stats.files = len(self.files)
            self.next_sha256 = incoming.expected_sha256
            return
        if self.ticket is not None:
            self.ticket.check_files(len(self.files))
        incoming.finish(more_follow=not last)

    # -- ending --------------------------------------------------------------------------------
    def commit(self, answer_plan: AnswerPlan | None) -> Stored:
        if not self.files:
            raise errors.NoFile()
        if self.next_sha256 is not None:
            raise errors.InvalidSha256("A sha256 field must come before the file it describes.")
        for incoming in self.files:
            incoming.commit()
        created_at = self.service.clock().isoformat(timespec="microseconds")
        metadata = self.metadata
        if self.ticket is not None:
            metadata = {**metadata, **self.ticket.fields}  # what it fixes, sent or not
        records = [f.draft(created_at=created_at, metadata=metadata) for f in self.files]
        answer: IdempotentAnswer | None = None
        status, body = 201, dict[str, Any]()
        if answer_plan is not None:
            answer, status, body = answer_plan.answer(records, self.fingerprint.hexdigest())
        self._write(records, answer)
        self.service.announcer.announce(EventType.STORED, records)
        return Stored(records, status, body)

    def _write(self, records: list[MediaRecord], answer: IdempotentAnswer | None) -> None:
        store = self.service.records
        try:
            store.create_many(
                records,
                answer=answer,
                reservation=self.reservation.id if self.reservation.started else None,
            )
        except errors.RecordExists as exc:
            # A retried write whose first answer was lost finds its own records: that is
            # success. Anything else would be a foreign record (never delete those).
            if not all(self._is_stored(record) for record in records):
                raise errors.RecordStoreError() from exc
        except errors.QuotaExceeded:
            raise  # refused as a whole: nothing was written
        except errors.GatewayError as exc:
            self.records = records  # the write may have applied with its answer lost
            raise errors.RecordStoreError() from exc

    def _is_stored(self, record: MediaRecord) -> bool:
        try:
            return self.service.records.get(record.media_id) == record
        except errors.GatewayError:
            return False

    def rollback(self) -> None:
        """Undo everything; each step on its own, so one failure cannot stop the others."""
        try:
            self.reservation.end()
        except Exception:  # it ends at its expiry anyway
            log.error("rollback could not end quota reservation", exc_info=True)
        kept: set[str] = set()  # media whose record may still exist: keep object, journal it
        for record in self.records:
            try:
                self.service.records.delete(record.media_id)
            except Exception:
                log.error("rollback could not delete record %s", record.media_id, exc_info=True)
                kept.add(record.media_id)
        for incoming in self.files:
            try:
                incoming.abort()  # a no-op once committed
            except Exception:
                log.error("rollback could not abort %s", incoming.media_id, exc_info=True)
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
