"""The gateway's HTTP API as the outbox uses it: a form POST, tus (tuspy), a record's status.

Every answer that is not a success becomes one of three errors: ``TokenRefused`` (401: nothing
can go on), ``Transient`` (network, 408, 409 ``idempotency_in_progress``, 423, 425, 429, 5xx;
with the answer's ``Retry-After``) or ``Permanent`` (any other 4xx, with the gateway's error
code). The form body is streamed from the queued copies (requests-toolbelt's encoder), never
built in memory.
"""

from __future__ import annotations

import contextlib
import email.utils
import mimetypes
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import requests
from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from .errors import Permanent, TokenRefused, Transient
from .store import FileEntry, Item

RETRYABLE_STATUSES = frozenset({408, 409, 423, 425, 429})
# A tus upload URL the gateway no longer knows: it expired or was removed; start a new one.
TUS_GONE_STATUSES = frozenset({404, 410})
DEFAULT_TIMEOUT = 60.0

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
        import json

        error = json.loads(body)["error"]
        return str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, body[:200].decode("utf-8", "replace")


def raise_for_answer(status: int, headers: Mapping[str, str], body: bytes, *, what: str) -> None:
    """Nothing for a 2xx; otherwise the error this answer means (see the module's doc)."""
    if 200 <= status < 300:
        return
    code, message = _error_code(body)
    text = f"{what}: {status} {code or ''} {message}".strip()
    if status == 401:
        raise TokenRefused(text)
    if status in RETRYABLE_STATUSES or status >= 500:
        raise Transient(text, retry_after=retry_after_seconds(headers.get("Retry-After")))
    raise Permanent(text, code)


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
        self, item: Item, entries: Sequence[FileEntry], on_progress: OnProgress
    ) -> list[dict[str, Any]]:
        """POST the item's fields and ``entries`` with its Idempotency-Key; the stored records.

        A replay after a lost answer gets the first answer (the gateway's idempotency), so the
        files are stored once however often this runs."""
        with contextlib.ExitStack() as stack:
            parts: list[tuple[str, Any]] = [("projectId", item.project), *item.fields]
            for entry in entries:
                stream: IO[bytes] = stack.enter_context(entry.path.open("rb"))
                kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                parts.append(("sha256", entry.sha256))
                parts.append(("files", (entry.name, stream, kind)))
            encoder = MultipartEncoder(fields=parts)
            spread = _ProgressSpread(entries, encoder.len, on_progress)
            monitor = MultipartEncoderMonitor(encoder, lambda m: spread(m.bytes_read))
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
        return records

    # -- tus for a big file ----------------------------------------------------------------------

    def upload_tus(
        self,
        item: Item,
        entry: FileEntry,
        *,
        on_url: Callable[[str | None], None],
        on_progress: OnProgress,
    ) -> dict[str, Any]:
        """Send ``entry`` over tus from where the server says it stands; its stored record.

        ``on_url`` saves a new upload URL before any byte is sent (and forgets one the server no
        longer knows), so a process killed mid-file resumes instead of starting again. The
        creation carries the file's own Idempotency-Key: a process killed after the gateway
        created the upload but before ``on_url`` saved it gets the same upload again."""
        key = f"{item.idempotency_key}.file{entry.position}"
        client = TusClient(
            self.base_url + "/api/tus/", headers={**self._auth, "Idempotency-Key": key}
        )
        metadata = {"projectId": item.project, "filename": entry.name, **dict(item.fields)}
        uploader: Any = None  # tuspy's Uploader (untyped)
        if entry.tus_url:
            try:
                uploader = client.uploader(
                    file_path=str(entry.path), url=entry.tus_url, chunk_size=self.chunk_size,
                    metadata=metadata, upload_checksum=True,
                )  # fmt: skip
            except TusCommunicationError as exc:
                if exc.status_code not in TUS_GONE_STATUSES:
                    raise self._tus_error(exc, None) from exc
                on_url(None)
        if uploader is None:
            with self._tus_errors(None):
                uploader = client.uploader(
                    file_path=str(entry.path), chunk_size=self.chunk_size, metadata=metadata,
                    upload_checksum=True,
                )  # fmt: skip
                url = uploader.create_url()
            on_url(url)
            uploader.set_url(url)
        on_progress(entry, uploader.offset)
        while uploader.offset < uploader.stop_at:
            with self._tus_errors(uploader):
                uploader.upload_chunk()
            on_progress(entry, uploader.offset)
        media_id = str(uploader.url).rstrip("/").rsplit("/", 1)[-1]
        record = self.media(media_id)
        if record.get("sha256") and record["sha256"] != entry.sha256:
            raise Permanent(
                f"the gateway stored SHA-256 {record['sha256']} for {entry.name}, "
                f"the outbox holds {entry.sha256}",
                "sha256_mismatch",
            )
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
            raise_for_answer(exc.status_code, headers, body, what="tus")
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
