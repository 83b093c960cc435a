"""The processing pipeline: what the worker does with each job. No Flask here.

Jobs (queue message bodies):
- ``{"type": "media.process", "mediaId"}``: scan -> describe and derive -> ready. Sent when
  ``media.stored`` is announced (every protocol), and by the sweeper for media left ``stored``.
- ``{"type": "webhook", "id", "event"}``: a Standard Webhooks delivery queued here before
  deliveries had their own queue: moved on to the webhook queue, never sent from a processing
  slot (gateway/processing/webhooks.py).
- S3 event notifications (``{"Records": [...]}``, and the ``s3:TestEvent`` that comes first):
  a direct upload's single PUT/POST landing on its staging key is verified and stored as if
  the client had called ``complete`` (clients that never do are still processed).

Every handler is idempotent, because delivery is at least once: each status change is a
compare-and-set in the record store, so a duplicate, reordered or redelivered job finds the
media already moved on and does nothing (or picks up where a killed worker stopped: the
stages are pure functions of the stored bytes, their outputs have fixed keys).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import errors, metrics
from gateway.media.events import Announcer, EventType
from gateway.media.lifecycle import Status
from gateway.media.records import MediaRecord, RecordStore, Sha256State, VariantInfo
from gateway.processing.derive import Derived, DeriveOptions, Variant, derive
from gateway.processing.sandbox import SandboxError, run
from gateway.processing.scanner import ScanError, Scanner
from gateway.queue import Message, Queue
from gateway.storage import ObjectStore, Quarantine
from gateway.uploads.direct import DirectUploadService
from gateway.uploads.s3_events import MalformedEvent, arrived_uploads, is_s3_event, store_prefixes
from gateway.uploads.sniff import SniffedType, is_allowed
from gateway.uploads.sniff_audio import extension_of, twin

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger(__name__)
PROCESS = "media.process"
WEBHOOK = "webhook"


class Unfinished(RuntimeError):
    """A job that must be tried again later (the worker backs off and redelivers it)."""


@dataclass(frozen=True)
class PipelineOptions:
    derive: DeriveOptions
    sandbox_memory: int
    sandbox_timeout: float
    keep_infected: bool  # keep an infected object in the quarantine (else delete it)
    # What a file whose streams settle its type anew (an audio-only video/mp4) may become.
    allowed_types: tuple[str, ...] = ("*/*",)

    def timeout_for(self, mime: str) -> float:
        """The sandbox's deadline: audio (and a container that may turn out to be audio) gets
        its decoding time on top (the decoder enforces that bound itself, with its reason)."""
        if mime.startswith("audio/") or twin(mime):
            return self.sandbox_timeout + self.derive.audio.max_decode_seconds
        return self.sandbox_timeout


@dataclass
class HashedRead:
    """A record's object as the job reads it (to the scanner, to the scratch file), hashed on
    the way when the record has no SHA-256 yet (direct uploads without a promise, tus uploads
    sent in pieces); the others are not hashed again (bench/direct_sha256.py: 0.6-0.8 CPU s/GiB)."""

    record: MediaRecord
    chunks: Iterable[bytes]
    digest: _Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    finished: bool = False  # every chunk went by

    @property
    def hashing(self) -> bool:
        return self.record.sha256_state is Sha256State.PENDING

    def __iter__(self) -> Iterator[bytes]:
        hashing = self.hashing
        for chunk in self.chunks:
            if hashing:
                self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.finished = True

    def computed(self) -> dict[str, Any]:
        """The changes that give the record the SHA-256 of its object, once the whole object
        was read; none for a record that has one."""
        if not self.hashing or not self.finished or self.size != self.record.size:
            return {}
        return {"sha256": self.digest.hexdigest(), "sha256_state": Sha256State.COMPUTED}


VARIANT_CHUNK = 1 << 20


def _variant_chunks(variant: Variant) -> Iterator[bytes]:
    """A variant's bytes: in memory, or read from its file a chunk at a time."""
    if variant.path is None:
        yield variant.data
        return
    with open(variant.path, "rb") as f:
        while chunk := f.read(VARIANT_CHUNK):
            yield chunk


def variant_key(media_key: str, name: str, extension: str = ".webp") -> str:
    """Variants live next to the original: ``media/<id>.jpg`` -> ``media/<id>/<name>.webp``
    (``.json``, ``.png``, ``.ogg`` for an audio file's)."""
    stem = media_key.rsplit(".", 1)[0] if "." in media_key.rsplit("/", 1)[-1] else media_key
    return f"{stem}/{name}{extension}"


class Pipeline:
    def __init__(
        self,
        *,
        records: RecordStore,
        store: ObjectStore,
        quarantine: Quarantine | None,
        scanner: Scanner | None,
        announcer: Announcer,
        options: PipelineOptions,
        webhook_queue: Queue | None = None,
        direct: DirectUploadService | None = None,
        storage_prefixes: tuple[str, ...] = ("",),
        holding: Quarantine | None = None,
    ) -> None:
        self.records = records
        self.store = store
        self.quarantine = quarantine
        # where the object of media that failed is withheld (the quarantine while scanning is on)
        self.holding = holding if holding is not None else quarantine
        self.scanner = scanner
        self.announcer = announcer
        self.options = options
        self.webhook_queue = webhook_queue
        self.direct = direct
        # where staging keys of direct uploads live: the media prefix, or the quarantine's
        self.storage_prefixes = store_prefixes(*storage_prefixes)

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        body = message.body
        kind = body.get("type")
        if kind == PROCESS:
            self.process(str(body["mediaId"]))
        elif kind == WEBHOOK:
            self.forward_webhook(body)
        elif is_s3_event(body):
            self.s3_event(body)
        else:
            log.warning("dropping a message the pipeline does not know: %.200s", body)

    def on_last_failure(self, message: Message, exc: BaseException) -> None:
        """The job will not be tried again: its media ends failed, with the reason."""
        if message.body.get("type") == PROCESS:
            self._fail(str(message.body["mediaId"]), f"Processing failed: {exc}")

    # -- media.process ---------------------------------------------------------------------------
    def process(self, media_id: str) -> None:
        record = self._get(media_id)
        if record is None:
            return  # deleted meanwhile
        if record.status is Status.STORED or record.status is Status.FAILED:
            record = self._move(record, status=Status.PROCESSING, stage="scan", reason="")
            if record is None:
                self.process(media_id)  # someone else moved it: look again
                return
        if record.status is not Status.PROCESSING:
            return  # ready, infected, or not committed: nothing to do (a duplicate)
        if record.quarantined and self.quarantine is None and self.holding is not None:
            # Scanning is off: withheld when it failed, it is processed again as it was then.
            self.holding.release(record.s3_key)
            record = self._move(record, quarantined=False, stage="describe")
            if record is None:
                self.process(media_id)  # someone else moved it: look again
                return
        if record.quarantined:
            with metrics.stage("scan"):
                record = self._scan(record)
            if record is None or record.status is not Status.PROCESSING:
                return
        with metrics.stage("describe"):
            self._describe(record)

    def _scan(self, record: MediaRecord) -> MediaRecord | None:
        assert self.quarantine is not None
        if self.scanner is None:
            raise Unfinished("The media is quarantined but no scanner is configured.")
        read = HashedRead(record, self.quarantine.store.read(record.s3_key))
        try:
            verdict = self.scanner.scan(read)
        except ScanError as exc:
            raise Unfinished(f"The scan gave no verdict: {exc}") from exc
        if not verdict.clean:
            infected = self._move(
                record,
                status=Status.INFECTED,
                stage="",
                reason=f"Infected: {verdict.signature}",
                **read.computed(),
            )
            if infected is not None:
                if not self.options.keep_infected:
                    self.quarantine.store.delete(record.s3_key)
                self.announcer.announce(EventType.INFECTED, [infected])
            return None
        self.quarantine.release(record.s3_key)
        return self._move(record, quarantined=False, stage="describe", **read.computed())

    def _describe(self, record: MediaRecord) -> None:
        with tempfile.TemporaryDirectory(prefix="gateway-job-") as scratch:
            path = Path(scratch) / "original"
            read = HashedRead(record, self.store.read(record.s3_key))
            with open(path, "wb") as out:
                for chunk in read:
                    out.write(chunk)
            computed = read.computed()
            if computed:
                # Written before anything is derived: whatever happens to the job from here
                # (no deriving for the type, a decoder that fails or crashes), the record has
                # the SHA-256 of its stored bytes.
                hashed = self._move(record, **computed)
                if hashed is None:
                    self.process(record.media_id)  # someone else moved it: look again
                    return
                record = hashed
            try:
                derived: Derived = run(
                    derive,
                    path,
                    record.mime_type,
                    self.options.derive,
                    memory_bytes=self.options.sandbox_memory,
                    timeout=self.options.timeout_for(record.mime_type),
                )
            except SandboxError as exc:
                if exc.kind == "crashed":
                    raise Unfinished(f"The decoder crashed: {exc}") from exc
                self._fail(record.media_id, f"The file cannot be processed: {exc}")
                return
            changes: dict[str, Any] = {}
            if derived.mime:
                if not is_allowed(derived.mime, self.options.allowed_types):
                    self._fail(
                        record.media_id,
                        f"The file is {derived.mime} (it holds "
                        f"{'video' if derived.mime.startswith('video/') else 'audio only'}); "
                        f"allowed: {', '.join(self.options.allowed_types)}.",
                    )
                    return
                settled = SniffedType(derived.mime, extension_of(derived.mime))
                changes.update(mime_type=settled.mime, file_type=settled.file_type)
            # Inside the scratch directory still: a large variant is a file there.
            variants = [self._store_variant(record, v) for v in derived.variants]
        changes.update(properties=derived.properties, variants=variants)
        if derived.cleaned_original is not None:
            replaced = self._replace_original(record, derived.cleaned_original)
            changes["properties"] = {
                **derived.properties,
                "uploadedSha256": replaced.pop("uploaded_sha256"),
            }
            changes.update(replaced)
        ready = self._move(record, status=Status.READY, stage="", **changes)
        if ready is not None:
            self.announcer.announce(EventType.READY, [ready])

    def _store_variant(self, record: MediaRecord, variant: Variant) -> VariantInfo:
        key = variant_key(record.s3_key, variant.name, variant.extension)
        writer = self.store.open_writer(
            key, content_type=variant.content_type, metadata={"media-id": record.media_id}
        )
        digest = hashlib.sha256()
        try:
            for chunk in _variant_chunks(variant):
                digest.update(chunk)
                writer.write(chunk)
            stored = writer.commit(sha256=digest.hexdigest())
        except BaseException:
            writer.abort()
            raise
        return VariantInfo(
            name=variant.name,
            key=key,
            content_type=variant.content_type,
            width=variant.width,
            height=variant.height,
            size=stored.size,
        )

    def _replace_original(self, record: MediaRecord, data: bytes) -> dict[str, Any]:
        """The original without its GPS position: the record follows (size, SHA-256)."""
        digest = hashlib.sha256(data).hexdigest()
        writer = self.store.open_writer(
            record.s3_key,
            content_type=record.mime_type,
            metadata={"media-id": record.media_id, "sha256": digest},
        )
        writer.write(data)
        writer.commit(sha256=digest)
        return {
            "size": len(data),
            "sha256": digest,
            "sha256_state": Sha256State.COMPUTED,
            "uploaded_sha256": record.sha256,
        }

    def _fail(self, media_id: str, reason: str) -> None:
        """The media ends failed, its object out of every public URL's reach as an infected
        one's: withheld first (should that fail, the job fails and is tried again with nothing
        changed), then the record. A record that moved on meanwhile gets its object back."""
        record = self._get(media_id)
        holding, withheld = self.holding, False
        while record is not None and record.status in (Status.STORED, Status.PROCESSING):
            if holding is not None and not record.quarantined:
                holding.withhold(record.s3_key)
                withheld = True
            held = {"quarantined": True} if withheld else {}
            failed = self._move(record, status=Status.FAILED, stage="", reason=reason, **held)
            if failed is not None:
                self.announcer.announce(EventType.FAILED, [failed])
                return
            record = self._get(media_id)
        if withheld and holding is not None and record is not None and not record.quarantined:
            holding.release(record.s3_key)

    # -- helpers ---------------------------------------------------------------------------------
    def _get(self, media_id: str) -> MediaRecord | None:
        try:
            return self.records.get(media_id)
        except errors.MediaNotFound:
            return None

    def _move(self, record: MediaRecord, **changes: Any) -> MediaRecord | None:
        return self.records.update(record.evolve(**changes), expected=record)

    # -- webhooks ----------------------------------------------------------------------------------
    def forward_webhook(self, body: dict[str, Any]) -> None:
        if self.webhook_queue is None:
            log.warning("dropping webhook %s: no webhook is configured", body.get("id"))
            return
        self.webhook_queue.send(body)

    # -- S3 notifications ------------------------------------------------------------------------
    def s3_event(self, body: dict[str, Any]) -> None:
        if self.direct is None:
            return
        try:
            arrived = arrived_uploads(body, self.storage_prefixes)
        except MalformedEvent as exc:
            log.warning("dropping a malformed S3 event (%s): %.200s", exc, body)
            return
        for media_id in arrived:
            self.direct.complete_from_event(media_id)
