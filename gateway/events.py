"""Domain events: what happened to a media item, announced once it is durable.

Every commit point publishes here: a streaming upload's records written (``media.stored``), a
direct upload's ``complete`` (``media.stored``), a media item deleted (``media.deleted``). The
processing pipeline and webhooks subscribe by being a ``Publisher``; the default only logs.

Publishing happens after the state change is durable and must never undo it: a publisher that
fails is logged, and the record's status stays the source of truth for anything that missed it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from .records import MediaRecord

log = logging.getLogger(__name__)


class EventType(enum.StrEnum):
    STORED = "media.stored"
    READY = "media.ready"
    FAILED = "media.failed"
    INFECTED = "media.infected"
    DELETED = "media.deleted"


@dataclass(frozen=True)
class MediaEvent:
    type: EventType
    media_id: str
    tenant: str
    project_id: str
    owner: str
    key: str
    status: str
    occurred_at: str  # ISO 8601 UTC

    @classmethod
    def of(cls, type: EventType, record: MediaRecord, *, at: datetime) -> MediaEvent:
        return cls(
            type=type,
            media_id=record.media_id,
            tenant=record.tenant,
            project_id=record.project_id,
            owner=record.owner,
            key=record.s3_key,
            status=record.status.value,
            occurred_at=at.isoformat(timespec="microseconds"),
        )


class Publisher(Protocol):
    def publish(self, events: Sequence[MediaEvent]) -> None:
        """Hand the events on (a log, a queue, ...); may raise, callers only log that."""


class LogPublisher:
    """The default: one JSON log line per event."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def publish(self, events: Sequence[MediaEvent]) -> None:
        for event in events:
            self.logger.info(
                {
                    "event": event.type.value,
                    "mediaId": event.media_id,
                    "projectId": event.project_id,
                    "status": event.status,
                }
            )


class Announcer:
    """Builds the events of a state change and publishes them without ever raising."""

    def __init__(
        self, publisher: Publisher, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.publisher = publisher
        self.clock = clock

    def announce(self, type: EventType, records: Sequence[MediaRecord]) -> list[MediaEvent]:
        at = self.clock()
        events = [MediaEvent.of(type, record, at=at) for record in records]
        try:
            self.publisher.publish(events)
        except Exception:
            log.error(
                "could not publish %s for %s",
                type.value,
                [e.media_id for e in events],
                exc_info=True,
            )
        return events
