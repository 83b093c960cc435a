"""Media records and idempotency entries behind small protocols; SQLite and DynamoDB backends."""
from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

from ..errors import BadRequest


@dataclass(frozen=True)
class MediaRecord:
    media_id: str
    project_id: str
    tenant: str  # "" when the token carries no tenant
    owner: str
    original_name: str
    file_type: str  # image | video | other
    mime_type: str
    s3_key: str
    size: int
    sha256: str
    created_at: str  # ISO 8601 UTC, sortable
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = "stored"  # direct-to-S3 uploads add pending / rejected / aborted / expired
    # Direct-to-S3 uploads: what was promised and how the bytes travel (see gateway/direct.py).
    upload: dict[str, Any] = field(default_factory=dict)

    @property
    def expires_at(self) -> str:
        """When a pending direct upload expires (ISO 8601), or "" for any other record."""
        return self.upload.get("expiresAt", "") if self.status == "pending" else ""

    def evolve(self, **changes: Any) -> "MediaRecord":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MediaRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Page:
    items: list[MediaRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class SavedResponse:
    status: int
    body: dict[str, Any]


class RecordStore(Protocol):
    def create_many(self, records: Sequence[MediaRecord]) -> None:
        """Insert all records or none; never overwrites (raises RecordExists)."""

    def get(self, media_id: str) -> MediaRecord:
        """Raises RecordNotFound."""

    def list(self, *, tenant: str, project_id: str, cursor: str | None, limit: int) -> Page:
        """Stored media, newest first."""

    def delete(self, media_id: str) -> None:
        """Idempotent."""

    def replace(self, record: MediaRecord, *, expected_status: str) -> bool:
        """Overwrite the record iff its stored status is still ``expected_status``.

        False when another request moved it first (compare-and-set on the status).
        """

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        """Pending direct uploads whose expiry (ISO 8601) is before ``now``."""

    def check(self) -> None:
        """Raise RecordStoreError unless reachable (readiness)."""

    def create_schema(self) -> None: ...


class IdempotencyStore(Protocol):
    def claim(self, scope: str, key: str, *, now: float, lock_timeout: float,
              ttl: float) -> SavedResponse | None:
        """Claim the key for a new request (None), or return the saved first answer.

        Raises Conflict while another request holds a fresh claim on it.
        """

    def save(self, scope: str, key: str, response: SavedResponse, *, now: float,
             ttl: float) -> None: ...

    def release(self, scope: str, key: str) -> None:
        """Forget a claim whose request failed, so a retry can run."""


def encode_cursor(created_at: str, media_id: str) -> str:
    raw = json.dumps([created_at, media_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, media_id = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(created_at, str) or not isinstance(media_id, str):
            raise ValueError
        return created_at, media_id
    except ValueError:
        raise BadRequest("The cursor is not valid.", code="invalid_cursor") from None


def open_records(settings):
    """The backend named by ``GATEWAY_RECORDS_URL`` (a RecordStore that is also the
    IdempotencyStore)."""
    if settings.records_url.startswith("dynamodb://"):
        from .dynamodb import DynamoRecordStore, make_dynamodb_client

        store = DynamoRecordStore(make_dynamodb_client(settings),
                                  table=settings.records_url[len("dynamodb://"):].strip("/"))
    else:
        from .sqlite import SqliteRecordStore

        store = SqliteRecordStore(settings.records_url[len("sqlite:///"):])
    return store
