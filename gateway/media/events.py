"""Domain events: what happened to a media item, announced once it is durable.

Every commit point publishes here: a streaming upload's records written (``media.stored``), a
direct upload's ``complete`` (``media.stored``), a media item deleted (``media.deleted``). The
processing pipeline, webhooks and SNS subscribe by being a ``Publisher``; the default only logs.

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

from gateway.media.records import MediaRecord
from gateway.queue import Queue

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
    reason: str = ""

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
            reason=record.reason,
        )

    @property
    def id(self) -> str:
        """Stable per media and event type: a webhook receiver deduplicates by it."""
        return f"{self.media_id}.{self.type.value}"

    def payload(self) -> dict[str, object]:
        """The webhook body (Standard Webhooks' type / timestamp / data envelope)."""
        data: dict[str, object] = {
            "mediaId": self.media_id,
            "projectId": self.project_id,
            "tenant": self.tenant or None,
            "owner": self.owner,
            "status": self.status,
        }
        if self.reason:
            data["reason"] = self.reason
        return {"type": self.type.value, "timestamp": self.occurred_at, "data": data}


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


class QueuePublisher:
    """Turns events into jobs: ``media.stored`` into a processing job on ``queue``, and every
    event into a webhook delivery on ``webhooks`` and an SNS publication on ``sns`` (the
    deliveries' queue, when a webhook or a topic is configured: one job per target); then hands
    them to ``then`` (the log)."""

    def __init__(
        self,
        queue: Queue,
        *,
        processing: bool,
        webhooks: Queue | None,
        then: Publisher,
        sns: Queue | None = None,
    ) -> None:
        self.queue = queue
        self.processing = processing
        self.webhooks = webhooks
        self.sns = sns
        self.then = then

    def publish(self, events: Sequence[MediaEvent]) -> None:
        for event in events:
            if self.processing and event.type is EventType.STORED:
                self.queue.send({"type": "media.process", "mediaId": event.media_id})
            if self.webhooks is not None:
                self.webhooks.send({"type": "webhook", "id": event.id, "event": event.payload()})
            if self.sns is not None:
                self.sns.send({"type": "sns", "id": event.id, "event": event.payload()})
        self.then.publish(events)


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
