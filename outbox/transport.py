"""The gateway's HTTP API as the outbox uses it: a form POST, tus (tuspy), a record's status.

Every answer that is not a success becomes one error, decided by the gateway's error code
(``codes``): ``TokenRefused`` (nothing can go on), ``Transient`` (with the answer's
``Retry-After``), ``UploadGone`` / ``AlreadyStored`` (tus: start again / read the record) or
``Permanent`` (with the code). The form body is streamed from the queued copies
(requests-toolbelt's encoder), never built in memory. Every record the gateway returns is checked
against the SHA-256 taken at push (``verify_record``).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import mimetypes
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import requests
from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from outbox.codes import Outcome, outcome
from outbox.errors import AlreadyStored, Interrupted, Permanent, TokenRefused, Transient, UploadGone
from outbox.store import FileEntry, Item

DEFAULT_TIMEOUT = 60.0
# The field every record of an item carries, so its records can be found again by the item.
ITEM_FIELD = "outboxItem"
# Statuses of a record whose bytes the gateway holds (a record in any other is not adopted).
HELD_STATUSES = frozenset({"stored", "processing", "ready"})
MAX_RESTARTS = 2  # new tus uploads for one file in one attempt before waiting for the next
LISTING_PAGE = 100

OnProgress = Callable[[FileEntry, int], None]


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_code(body: bytes) -> tuple[str | None, str]:
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, body[:200].decode("utf-8", "replace")


def raise_for_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, what: str, tus: bool = False
) -> None:
    """Nothing for a 2xx; otherwise the error this answer means (see ``codes.outcome``)."""
    if 200 <= status < 300:
        return
    code, message = _error_code(body)
    text = f"{what}: {status} {code or ''} {message}".strip()
    match outcome(status, code, tus=tus):
        case Outcome.TOKEN:
            raise TokenRefused(text)
        case Outcome.RETRY:
            raise Transient(text, retry_after=retry_after_seconds(headers.get("Retry-After")))
        case Outcome.RESTART:
            raise UploadGone(text)
        case Outcome.STORED:
            raise AlreadyStored(text)
        case Outcome.FAIL:
            raise Permanent(text, code)


def verify_record(entry: FileEntry, record: Mapping[str, Any]) -> None:
    """The gateway's SHA-256 for ``entry`` must be the one taken at push whenever it gives one.

    An empty ``sha256`` (a tus upload sent in several PATCHes, hashed chunk by chunk) passes:
    each chunk carried its own checksum."""
    stored = record.get("sha256") or ""
    if stored and stored != entry.sha256:
        raise Permanent(
            f"the gateway holds SHA-256 {stored} for {entry.name} (status "
            f"{record.get('status')}), the outbox holds {entry.sha256}: stopped, nothing more "
            "is sent for this item",
            "sha256_mismatch",
        )


@contextlib.contextmanager
def network_errors(what: str, *, gateway: bool = True) -> Iterator[None]:
    """``gateway``: a network failure means the gateway is unreachable (``sync --watch`` wakes
    such items when its /healthz answers again; a step's own target is not the gateway)."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Transient(f"{what}: {exc.__class__.__name__}", unreachable=gateway) from exc
    except requests.RequestException as exc:  # a broken answer: worth another try later
        raise Transient(f"{what}: {exc.__class__.__name__}") from exc


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        chunk_size: int = 8 * 1024 * 1024,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.token = token  # for the gateway only: steps refuse to carry it
        self._auth = {"Authorization": f"Bearer {token}"}
        self.session = requests.Session()
        self.session.headers.update(self._auth)

    def healthy(self) -> bool:
        try:
            return self.session.get(self.base_url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # -- one form POST for an item's small files -----------------------------------------------

    def upload_form(
        self,
        item: Item,
        entries: Sequence[FileEntry],
        on_progress: OnProgress,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[dict[str, Any]]:
        """POST the item's fields and ``entries`` with its Idempotency-Key; the stored records.

        A replay after a lost answer gets the first answer (the gateway's idempotency), so the
        files are stored once however often this runs. ``should_stop`` is asked as the body is
        read: when it says so the request is cut (the gateway keeps nothing of a cut body)."""
        with contextlib.ExitStack() as stack:
            parts: list[tuple[str, Any]] = [
                ("projectId", item.project), *item.fields, (ITEM_FIELD, item.id)
            ]  # fmt: skip
            for entry in entries:
                stream: IO[bytes] = stack.enter_context(entry.path.open("rb"))
                kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                parts.append(("sha256", entry.sha256))
                parts.append(("files", (entry.name, stream, kind)))
            encoder = MultipartEncoder(fields=parts)
            spread = _ProgressSpread(entries, encoder.len, on_progress)

            def read(monitor: MultipartEncoderMonitor) -> None:
                if should_stop():
                    raise Interrupted("stopped while sending the form")
                spread(monitor.bytes_read)

            monitor = MultipartEncoderMonitor(encoder, read)
            with network_errors("upload"):
                answer = self.session.post(
                    self.base_url + "/api/upload",
                    data=monitor,
                    headers={
                        "Content-Type": monitor.content_type,
                        "Idempotency-Key": item.idempotency_key,
                    },
                    timeout=self.timeout,
                )
        raise_for_answer(answer.status_code, answer.headers, answer.content, what="upload")
        records: list[dict[str, Any]] = answer.json()["files"]
        if len(records) != len(entries):
            raise Permanent(f"upload: {len(records)} records for {len(entries)} files")
        for entry, record in zip(entries, records, strict=True):
            verify_record(entry, record)
        return records

    def records_of_item(self, item: Item, *, since: float) -> list[dict[str, Any]]:
        """The visible records this item stored (its ``outboxItem`` field), read from the
        project's listing newest first back to ``since`` (a time before its first request)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"projectId": item.project, "limit": str(LISTING_PAGE)}
            if cursor:
                params["cursor"] = cursor
            with network_errors("listing"):
                answer = self.session.get(
                    self.base_url + "/api/media", params=params, timeout=self.timeout
                )
            raise_for_answer(answer.status_code, answer.headers, answer.content, what="listing")
            page = answer.json()
            for record in page["items"]:
                created = datetime.datetime.fromisoformat(record["createdAt"]).timestamp()
                if created < since:
                    return found
                if (record.get("metadata") or {}).get(ITEM_FIELD) == item.id:
                    found.append(record)
            cursor = page.get("nextCursor")
            if not cursor:
                return found

    # -- tus for a big file ----------------------------------------------------------------------

    def upload_tus(
        self,
        item: Item,
        entry: FileEntry,
        *,
        on_url: Callable[[str | None], None],
        on_restart: Callable[[], None],
        on_progress: OnProgress,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any]:
        """Send ``entry`` over tus from where the server says it stands; its stored record.

        ``on_url`` saves a new upload URL before any byte is sent, so a process killed mid-file
        resumes instead of starting again. The creation carries the file's own Idempotency-Key:
        a process killed after the gateway created the upload but before ``on_url`` saved it
        gets the same upload again. An upload the gateway no longer knows (404, 410, expired,
        aborted: on the HEAD or on a PATCH) is first looked up as a record (its last PATCH may
        have been stored with the answer lost); if there is none, ``on_restart`` forgets it and
        moves the file to a new key, and a new upload starts from byte 0. ``should_stop`` is
        asked before each chunk (``Interrupted``)."""
        restarts = 0
        while True:
            try:
                return self._send_tus(item, entry, on_url, on_progress, should_stop)
            except AlreadyStored as stored:
                held = self._held_record(entry)
                if held is None:
                    raise Transient(f"{stored}; but its record is not readable yet") from stored
                return held
            except UploadGone as gone:
                held = self._held_record(entry)
                if held is not None:
                    return held
                if restarts == MAX_RESTARTS:
                    raise Transient(f"{gone} (a new upload was started {restarts} times)") from gone
                restarts += 1
                on_restart()

    def _send_tus(
        self,
        item: Item,
        entry: FileEntry,
        on_url: Callable[[str | None], None],
        on_progress: OnProgress,
        should_stop: Callable[[], bool],
    ) -> dict[str, Any]:
        client = TusClient(
            self.base_url + "/api/tus/",
            headers={**self._auth, "Idempotency-Key": tus_creation_key(item, entry)},
        )
        metadata = {
            "projectId": item.project, "filename": entry.name, **dict(item.fields),
            ITEM_FIELD: item.id,
        }  # fmt: skip
        uploader: Any = None  # tuspy's Uploader (untyped)
        with self._tus_errors(None):
            if entry.tus_url:
                uploader = client.uploader(
                    file_path=str(entry.path), url=entry.tus_url, chunk_size=self.chunk_size,
                    metadata=metadata, upload_checksum=True,
                )  # fmt: skip
            else:
                uploader = client.uploader(
                    file_path=str(entry.path), chunk_size=self.chunk_size, metadata=metadata,
                    upload_checksum=True,
                )  # fmt: skip
                url = uploader.create_url()
                on_url(url)
                uploader.set_url(url)
        on_progress(entry, uploader.offset)
        while uploader.offset < uploader.stop_at:
            if should_stop():
                raise Interrupted(f"stopped at byte {uploader.offset} of {entry.name}")
            with self._tus_errors(uploader):
                uploader.upload_chunk()
            on_progress(entry, uploader.offset)
        record = self.media(_media_id(str(uploader.url)))
        verify_record(entry, record)
        return record

    def _held_record(self, entry: FileEntry) -> dict[str, Any] | None:
        """The record of ``entry``'s tus upload if the gateway holds its bytes (all of them)."""
        if not entry.tus_url:
            return None
        try:
            record = self.media(_media_id(entry.tus_url))
        except Permanent:
            return None  # 404 media_not_found: nothing was stored under it
        if record.get("status") not in HELD_STATUSES or record.get("size") != entry.size:
            return None
        verify_record(entry, record)
        return record

    @contextlib.contextmanager
    def _tus_errors(self, uploader: Any) -> Iterator[None]:
        try:
            yield
        except TusCommunicationError as exc:
            raise self._tus_error(exc, uploader) from exc

    @staticmethod
    def _tus_error(exc: TusCommunicationError, uploader: Any) -> Exception:
        if exc.status_code is None:
            return Transient(f"tus: {exc}", unreachable=True)
        request = getattr(uploader, "request", None)
        headers = {k.title(): v for k, v in getattr(request, "response_headers", {}).items()}
        body = exc.response_content or b""
        if isinstance(body, str):
            body = body.encode()
        try:
            raise_for_answer(exc.status_code, headers, body, what="tus", tus=True)
        except (Transient, Permanent, TokenRefused) as error:
            return error
        return Transient(f"tus: {exc}")

    # -- records -----------------------------------------------------------------------------------

    def media(self, media_id: str) -> dict[str, Any]:
        with network_errors("status"):
            answer = self.session.get(f"{self.base_url}/api/media/{media_id}", timeout=self.timeout)
        raise_for_answer(answer.status_code, answer.headers, answer.content, what="status")
        record: dict[str, Any] = answer.json()
        return record


def tus_creation_key(item: Item, entry: FileEntry) -> str:
    """The file's creation key; a new one for each new upload after a gone one."""
    key = f"{item.idempotency_key}.file{entry.position}"
    return f"{key}.r{entry.generation}" if entry.generation else key


def _media_id(upload_url: str) -> str:
    return upload_url.rstrip("/").rsplit("/", 1)[-1]


class _ProgressSpread:
    """The form body's bytes read, told per file (the small part headers count as no file's)."""

    def __init__(self, entries: Sequence[FileEntry], body_length: int, report: OnProgress) -> None:
        self.entries = entries
        self.report = report
        payload = sum(e.size for e in entries)
        self.overhead = max(0, body_length - payload)
        self.last = [-1] * len(entries)

    def __call__(self, body_read: int) -> None:
        sent = max(0, body_read - self.overhead)
        start = 0
        for index, entry in enumerate(self.entries):
            mine = min(entry.size, max(0, sent - start))
            start += entry.size
            if mine != self.last[index]:
                self.last[index] = mine
                self.report(entry, mine)
