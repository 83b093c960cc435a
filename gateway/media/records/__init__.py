"""Media records and idempotency entries behind small protocols; SQLite and DynamoDB backends.

Both backends pass one contract suite (tests/test_record_store_contract.py). The rules:
- ``create_many`` writes all records or none and never overwrites; with ``answer`` it also
  completes an idempotency claim in the same atomic write.
- ``update`` is the only way a record changes: a compare-and-set on the record's ``version``
  that also enforces the lifecycle's transition table (``lifecycle.TRANSITIONS``).
- ``list_media`` shows visible records only (``lifecycle.VISIBLE``), newest first.
- ``stalled`` finds media still ``stored`` after a while: the sweeper queues them again for
  processing, in case the job announced at commit was lost.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway import errors
from gateway.media.lifecycle import SERVABLE, Status, may_move
from gateway.media.naming import MEDIA_ID_RE
from gateway.media.records.quota import HELD, Held, QuotaLimits
from gateway.storage.resumable import CommittedPart, Stored

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.media.principal import Principal


@dataclass(frozen=True)
class DirectUpload:
    """How the bytes of a direct-to-S3 upload travel, and what was promised
    (gateway/uploads/direct.py)."""

    method: Literal["put", "multipart"]
    expires_at: str  # ISO 8601 UTC, seconds
    s3_upload_id: str = ""  # multipart only
    part_size: int = 0
    part_count: int = 0
    promised_sha256: str = ""
    completed_at: str = ""

    protocol: Literal["direct"] = "direct"


@dataclass(frozen=True)
class TusUpload:
    """A tus 1.0 upload's state (gateway/uploads/tus.py): everything any gateway node needs to take
    the next request. offset = the committed parts + the bytes held in ``pending_key``."""

    expires_at: str  # ISO 8601 UTC, seconds
    length: int | None  # None: deferred (creation-defer-length) until a request says it
    part_size: int
    offset: int = 0
    parts: tuple[CommittedPart, ...] = ()
    pending_key: str = ""  # the chunk object holding the bytes past the last part
    pending_size: int = 0
    s3_upload_id: str = ""  # the multipart upload of the final object, once started
    sha256: str = ""  # once the last byte arrived
    hash_state: str = ""  # the SHA-256 of bytes [0, offset) so far (gateway/uploads/hashstate.py)
    concat: str = ""  # "" | "partial" | "final"
    partials: tuple[str, ...] = ()  # a final upload's partial uploads, in order
    client_metadata: tuple[tuple[str, str], ...] = ()  # Upload-Metadata, as sent
    lock_token: str = ""  # a request holding the upload (tus_lease.py), until lock_until
    lock_until: float = 0.0
    generation: int = 0  # how many leases were taken: each writes its own part numbers
    protocol: Literal["tus"] = "tus"

    @property
    def committed(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def stored(self) -> Stored:
        """What storage holds of the upload, as the resumable store (its ``Stored``) says it."""
        return Stored(
            parts=self.parts,
            tail_key=self.pending_key,
            tail_size=self.pending_size,
            upload_id=self.s3_upload_id,
        )

    def holding(self, stored: Stored, **changes: Any) -> TusUpload:
        """The upload once storage holds ``stored`` (a commit, a join), with ``changes``."""
        return dataclasses.replace(
            self,
            parts=stored.parts,
            pending_key=stored.tail_key,
            pending_size=stored.tail_size,
            s3_upload_id=stored.upload_id,
            **changes,
        )


UploadState = DirectUpload | TusUpload


def tus_state(record: MediaRecord) -> TusUpload:
    """The state of a tus upload's record."""
    assert isinstance(record.upload, TusUpload)
    return record.upload


@dataclass(frozen=True)
class VariantInfo:
    """A derived file stored next to the original (gateway/processing/pipeline.py)."""

    name: str  # thumb-320, thumb-1280, poster, preview; audio: peaks, waveform, opus
    key: str
    content_type: str
    width: int | None  # None for a variant that is no picture (peaks, an audio copy)
    height: int | None
    size: int


class Sha256State(enum.StrEnum):
    """How a record's SHA-256 is known (the API's ``sha256State``)."""

    RECEIVED = "received"  # hashed by the gateway over the bytes it received (form, tus)
    VERIFIED = "verified"  # promised by the client and checked against what the store holds
    PENDING = "pending"  # not known yet: processing computes it from the stored object
    COMPUTED = "computed"  # computed from the stored object (by processing, or at complete)


@dataclass(frozen=True)
class MediaRecord:
    media_id: str
    project_id: str
    tenant: str  # "" when the token carries no tenant
    owner: str
    original_name: str
    file_type: str  # image | video | audio | other
    mime_type: str
    s3_key: str  # the store's key (the S3 store adds its prefix: ObjectStore.full_key)
    size: int
    sha256: str  # hex; "" exactly when sha256_state is PENDING
    created_at: str  # ISO 8601 UTC, sortable
    metadata: dict[str, str] = field(default_factory=dict)
    status: Status = Status.STORED
    reason: str = ""  # why it ended rejected, aborted, expired or failed
    upload: UploadState | None = None  # set while (and after) a protocol receives the bytes
    version: int = 0  # bumped by every update: the compare-and-set token
    # Processing (gateway/processing/pipeline.py).
    quarantined: bool = False  # the object waits in the quarantine for its scan
    stage: str = ""  # the stage being worked on while processing
    properties: dict[str, Any] = field(default_factory=dict)  # what describing found
    variants: list[VariantInfo] = field(default_factory=list)
    sha256_state: Sha256State = Sha256State.RECEIVED

    def __post_init__(self) -> None:
        if (self.sha256 == "") != (self.sha256_state is Sha256State.PENDING):
            raise ValueError(
                f"sha256_state {self.sha256_state} does not fit "
                f"{'no' if not self.sha256 else 'a'} SHA-256 (only pending has none)"
            )

    @property
    def servable(self) -> bool:
        """Whether any public URL may serve the object: committed, out of the quarantine (so
        scanned clean when scanning is on), neither failed nor infected."""
        return not self.quarantined and self.status in SERVABLE

    @property
    def expires_at(self) -> str:
        """When a pending upload expires (ISO 8601), or "" for any other record."""
        if self.status is Status.PENDING and self.upload is not None:
            return self.upload.expires_at
        return ""

    def evolve(self, **changes: Any) -> MediaRecord:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaRecord:
        values = dict(data)
        values["status"] = Status(values["status"])
        upload = values.get("upload")
        if upload is not None:
            values["upload"] = _UPLOAD_TYPES[upload["protocol"]](**upload)
        values["variants"] = [VariantInfo(**v) for v in values.get("variants", [])]
        state = values.get("sha256_state")
        values["sha256_state"] = Sha256State(state) if state else _known_sha256_state(values)
        return cls(**values)


def _known_sha256_state(values: dict[str, Any]) -> Sha256State:
    """The state of a record written before records said it, from what they do say: no hash
    is pending; one of an original processing replaced (GPS removed) was computed; a direct
    upload's is the promised one, checked, or else one processing computed; a tus upload's was
    hashed as received when it came in one request, else computed by processing; a streamed
    form's was hashed as received."""
    sha256, upload = values["sha256"], values.get("upload")
    if not sha256:
        return Sha256State.PENDING
    if "uploadedSha256" in values.get("properties", {}):
        return Sha256State.COMPUTED
    if isinstance(upload, DirectUpload):
        promised = upload.promised_sha256 == sha256
        return Sha256State.VERIFIED if promised else Sha256State.COMPUTED
    if isinstance(upload, TusUpload) and upload.sha256 != sha256:
        return Sha256State.COMPUTED
    return Sha256State.RECEIVED


def _tus_upload(values: dict[str, Any]) -> TusUpload:
    values = dict(values)
    values["parts"] = tuple(CommittedPart(**p) for p in values.get("parts", ()))
    values["partials"] = tuple(values.get("partials", ()))
    values["client_metadata"] = tuple(tuple(kv) for kv in values.get("client_metadata", ()))
    return TusUpload(**values)


_UPLOAD_TYPES: dict[str, Callable[..., UploadState]] = {
    "direct": DirectUpload,
    "tus": lambda **v: _tus_upload(v),
}


@dataclass(frozen=True)
class Page:
    items: list[MediaRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class SavedResponse:
    """The first answer to an idempotent request, and what identifies that request."""

    status: int
    body: dict[str, Any]
    fingerprint: str


@dataclass(frozen=True)
class IdempotentAnswer:
    """Completes an idempotency claim in the same atomic write as the records it answers with."""

    scope: str
    key: str
    response: SavedResponse
    expires_at: float  # epoch seconds


@dataclass(frozen=True)
class UsageCount:
    """A project's records of one file type in one status: how many, and their bytes."""

    file_type: str
    status: Status
    files: int
    bytes: int


UsageDeltas = dict[tuple[str, str], tuple[int, int]]


def usage_deltas(old: MediaRecord | None, new: MediaRecord | None) -> UsageDeltas:
    """What one write changes in its project's usage counters: (fileType, status) -> (files,
    bytes); nothing for a write that changes neither status, type nor size. Every store
    applies these in the same atomic write as the record itself."""
    deltas: UsageDeltas = {}
    for record, sign in ((old, -1), (new, 1)):
        if record is None:
            continue
        key = (record.file_type, record.status.value)
        files, size = deltas.get(key, (0, 0))
        deltas[key] = (files + sign, size + sign * (record.size or 0))
    return {key: change for key, change in deltas.items() if change != (0, 0)}


def held_of(deltas: UsageDeltas) -> Held:
    """The part of ``deltas`` that changes what a project holds (``quota.HELD`` statuses)."""
    files = sum(f for (_, status), (f, _) in deltas.items() if Status(status) in HELD)
    size = sum(b for (_, status), (_, b) in deltas.items() if Status(status) in HELD)
    return Held(files, size)


def merge_deltas(
    records: Sequence[MediaRecord], removed: Sequence[MediaRecord] = ()
) -> dict[tuple[str, str], UsageDeltas]:
    """New records' deltas, and removed records' (negative), per (tenant, project)."""
    merged: dict[tuple[str, str], UsageDeltas] = {}
    changes = [(None, r) for r in records] + [(r, None) for r in removed]
    for old, new in changes:
        record = new or old
        assert record is not None
        project = merged.setdefault((record.tenant, record.project_id), {})
        for key, (files, size) in usage_deltas(old, new).items():
            had = project.get(key, (0, 0))
            project[key] = (had[0] + files, had[1] + size)
    return {scope: deltas for scope, deltas in merged.items() if deltas}


class RecordStore(Protocol):
    def create_many(
        self,
        records: Sequence[MediaRecord],
        *,
        answer: IdempotentAnswer | None = None,
        reservation: str | None = None,
        replacing: Sequence[MediaRecord] = (),
    ) -> None:
        """Insert all records (and save ``answer``, end ``reservation``, delete the records
        ``replacing`` lists) or none; never overwrites (RecordExists); RecordChanged if one of
        ``replacing`` is no longer at its version; QuotaExceeded if the project or tenant would
        hold more than its limits (what the reservation and ``replacing`` held is counted as
        released, in the same write)."""

    def get(self, media_id: str) -> MediaRecord:
        """Raises MediaNotFound."""

    def list_media(
        self,
        *,
        tenant: str,
        project_id: str,
        cursor: str | None,
        limit: int,
        status: Status | None = None,
    ) -> Page:
        """Visible media of one project, newest first; ``status`` narrows it to one status."""

    def delete(self, media_id: str) -> None:
        """Idempotent."""

    def update(self, record: MediaRecord, *, expected: MediaRecord) -> MediaRecord | None:
        """Write ``record`` iff the stored one is still ``expected`` (same version), and only
        along an allowed transition (else IllegalTransition). The written record, with its
        version bumped, or None when another request changed it first."""

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        """Pending uploads whose expiry (ISO 8601) is before ``now``."""

    def stalled(self, *, created_before: str, limit: int) -> list[MediaRecord]:
        """Media still ``stored`` (never picked up by processing) created before the time."""

    def count_pending(self, *, tenant: str, owner: str, at_most: int) -> int:
        """How many uploads of this caller are pending (counting stops past ``at_most``)."""

    def reserve(
        self,
        reservation: str,
        *,
        tenant: str,
        project_id: str,
        files: int,
        bytes: int,
        expires_at: float,
    ) -> None:
        """Add ``files`` and ``bytes`` to the reservation (creating it), valid until
        ``expires_at`` (epoch seconds); QuotaExceeded, and nothing added, past a limit."""

    def end_reservation(self, reservation: str) -> None:
        """End a reservation (idempotent)."""

    def end_expired_reservations(self, *, now: float, limit: int) -> int:
        """End reservations past their expiry (a process that died holding them)."""

    def recount_ledgers(self) -> list[tuple[str, str, Held]]:
        """Where quotas are checked against ledgers kept apart from the records (DynamoDB), set
        each project's and tenant's to what is held; each (tenant, project, held). [] where
        quotas are checked against the records themselves (SQLite)."""

    def usage(self, *, tenant: str, project_id: str) -> list[UsageCount]:
        """The project's counters (kept by every write, never counted by scanning), every
        (file type, status) with at least one record."""

    def check(self) -> None:
        """Raise RecordStoreError unless reachable (readiness)."""

    def create_schema(self) -> None: ...


class IdempotencyStore(Protocol):
    def claim(
        self, scope: str, key: str, *, now: float, lock_timeout: float, ttl: float
    ) -> SavedResponse | None:
        """Claim the key for a new request (None), or return the saved first answer.

        Raises IdempotencyInProgress while another request holds a fresh claim on it.
        """

    def release(self, scope: str, key: str) -> None:
        """Forget a claim whose request failed, so a retry can run."""


class MediaStore(RecordStore, IdempotencyStore, Protocol):
    """What each backend is: both stores in one (one transaction can touch both)."""


def owned_upload(
    records: RecordStore,
    principal: Principal,
    upload_id: str,
    kind: type[DirectUpload] | type[TusUpload],
) -> MediaRecord:
    """An upload of ``kind`` the caller may act on: its own, or any it may see when it is an
    admin (others' are 404, as if they did not exist)."""
    try:
        record = records.get(upload_id)
    except errors.MediaNotFound:
        raise errors.UploadNotFound() from None
    if not isinstance(record.upload, kind) or not principal.may_modify(
        tenant=record.tenant, project_id=record.project_id, owner=record.owner
    ):
        raise errors.UploadNotFound()
    return record


def checked_update(current: MediaRecord, new: MediaRecord) -> MediaRecord:
    """The record ``update`` writes: the transition checked, the version bumped."""
    if new.media_id != current.media_id:
        raise ValueError("update must keep the media id")
    if new.status is not current.status and not may_move(current.status, new.status):
        raise errors.IllegalTransition(
            f"A media item cannot move from {current.status} to {new.status}."
        )
    return new.evolve(version=current.version + 1)


def encode_cursor(created_at: str, media_id: str) -> str:
    raw = json.dumps([created_at, media_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError, RecursionError):
        raise errors.InvalidCursor() from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(part, str) for part in value)
        or not value[0].isascii()
        or not MEDIA_ID_RE.fullmatch(value[1])
    ):
        raise errors.InvalidCursor()
    return value[0], value[1]


def open_records(settings: Settings) -> MediaStore:
    """The backend named by ``GATEWAY_RECORDS_URL``."""
    from gateway.metrics import instrument_record_store

    if settings.records_url.startswith("dynamodb://"):
        from gateway.media.records.dynamodb import DynamoRecordStore, make_dynamodb_client

        store: MediaStore = DynamoRecordStore(
            make_dynamodb_client(settings),
            table=settings.records_url[len("dynamodb://") :].strip("/"),
            limits=QuotaLimits.of(settings),
        )
        return instrument_record_store(store, "dynamodb")
    from gateway.media.records.sqlite import SqliteRecordStore

    return instrument_record_store(
        SqliteRecordStore(
            settings.records_url[len("sqlite:///") :], limits=QuotaLimits.of(settings)
        ),
        "sqlite",
    )
