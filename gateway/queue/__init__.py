"""The job queue: one small interface, two backends chosen by ``GATEWAY_QUEUE_URL``.

- ``sqlite:///path`` (the embedded default): a lease queue in SQLite. Receiving a message leases
  it for a visibility timeout and counts the receive; a worker that dies (SIGKILL included)
  simply lets the lease run out and the message is delivered again. A message received
  ``max_receives`` times and still not deleted goes to the dead-letter table on its next
  receive. Safe with several worker processes (``UPDATE ... RETURNING`` under SQLite's lock).
- ``sqs://queue-name`` (production): Amazon SQS (or any endpoint speaking its API, such as a
  moto server), with a dead-letter queue ``<name>-dlq`` through its RedrivePolicy, long polling
  and ChangeMessageVisibility for backoff and heartbeats.

Delivery is at least once on both: handlers must be idempotent (the pipeline's are: every status
change is a compare-and-set in the record store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config import Settings


@dataclass(frozen=True)
class Message:
    id: str
    body: dict[str, Any]
    receipt: str  # identifies this delivery (a later delivery gets another)
    receive_count: int  # 1 on the first delivery
    sent_at: float  # epoch seconds


@dataclass(frozen=True)
class QueueStats:
    visible: int  # waiting to be received
    in_flight: int  # received, not yet deleted nor back
    dead: int  # in the dead-letter queue
    oldest_age: float | None  # seconds the oldest waiting message has waited (None: unknown)


class Queue(Protocol):
    max_receives: int

    def create(self) -> None:
        """Create the queue and its dead-letter queue (idempotent)."""

    def send(self, body: dict[str, Any], *, delay: float = 0) -> None: ...

    def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Message]:
        """Up to ``max_messages``, waiting up to ``wait`` seconds for the first; each is leased
        for ``visibility`` seconds."""

    def delete(self, message: Message) -> None:
        """Done with it (idempotent)."""

    def retry_later(self, message: Message, *, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds (also: extend a lease)."""

    def stats(self) -> QueueStats: ...

    def redrive(self, *, limit: int) -> int:
        """Move up to ``limit`` dead letters back to the queue; how many moved."""


class InvalidMessage(ValueError):
    """A message body that is not a JSON object."""


def open_queue(settings: Settings, url: str | None = None) -> Queue:
    """The backend named by ``url``: by default ``GATEWAY_QUEUE_URL`` (the processing queue);
    the webhook deliveries' queue is ``settings.effective_webhook_queue_url``."""
    url = settings.queue_url if url is None else url
    if url.startswith("sqs://"):
        from gateway.queue.sqs import SqsQueue, make_sqs_client

        return SqsQueue(
            make_sqs_client(settings),
            name=url[len("sqs://") :].strip("/"),
            max_receives=settings.queue_max_receives,
        )
    from gateway.queue.sqlite import SqliteQueue

    return SqliteQueue(url[len("sqlite:///") :], max_receives=settings.queue_max_receives)
